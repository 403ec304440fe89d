"""The training-method registry: what a method declares (`TrainingMethod`), what its step computes, and the checks
every method gets before training starts. A method is one `register_method(TrainingMethod(...))` in its own file.

A method's `build(model, config, rng)` returns the step it trains with: a function from one batch to its
losses, plus any training-only modules (auxiliary heads) that the optimizer updates and the checkpoint
keeps, but that `measure`, `destruct` and the figures never see. Registering a method also tells the
configuration its options and the tables its style and run columns, so neither imports this package.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

from loafing.config import (OptionSpec, TrainConfig, declare_method_options, forget_method_options,
                            with_method_defaults)
from loafing.distributed import World
from loafing.errors import LoafingError
from loafing.models import StagedModel
from loafing.plans import Plan, parse_plan
from loafing.method_styles import add_method_style, add_method_variants, remove_method_style, remove_method_variants
from loafing.schema import add_run_column, remove_run_column

ROLES = ("conventional", "stimulative", "")  # what the figures compare a method as (see TrainingMethod.role)


@dataclass
class StepResult:
    """Losses of one optimization step: the total, the main network's cross-entropy, and the KL term."""

    loss: torch.Tensor
    ce: torch.Tensor
    kl: torch.Tensor


@dataclass
class TrainingStep:
    """What a method does with one batch, and the training-only modules it optimizes besides the model."""

    loss: Callable[[torch.Tensor, torch.Tensor], StepResult]
    modules: nn.Module | None = None
    # False where a step may leave parameters without a gradient (dropped or unused blocks): DDP must look for them.
    uses_all_parameters: bool = True


@dataclass(frozen=True)
class TrainingMethod:
    """A registered training method: its step, how figures show it, its own options and run columns, and what it
    cannot run with."""

    name: str
    label: str  # its name in figures and tables
    colour: str  # its colour in figures
    description: str
    build: Callable[[StagedModel, TrainConfig, random.Random], TrainingStep]
    # "conventional": the usual training whose sub-networks loaf (CT); "stimulative": a method with sampling spaces,
    # a lambda and sampling rules (ST); "": another method.
    role: str = ""
    options: tuple[OptionSpec, ...] = ()  # settings only this method (and others declaring them alike) reads
    run_columns: dict[str, str] = field(default_factory=dict)  # own option -> column type, empty in others' rows
    # Own options whose other values make another scheme (the `variant` column: "subnets=4"); not the ones that
    # change only how a step is computed or which seed draws (st_step, space_seed), nor those with their own column.
    variant_options: tuple[str, ...] = ()
    # Raises a one-line LoafingError for settings it cannot run with (config, the device if known, the processes).
    check: Callable[[TrainConfig, torch.device | None, World], None] | None = None
    trains_plan: bool = False  # whether it can train a sub-network alone (`--plan`)
    relative_cost: float = 1.0  # training time relative to CT, for rough cost estimates (--dry-run) only
    # A run's relative cost where its own options change it (given them, defaults filled); else relative_cost.
    run_cost: Callable[[Mapping[str, Any]], float] | None = None


METHODS: dict[str, TrainingMethod] = {}


def register_method(method: TrainingMethod) -> TrainingMethod:
    """Add a training method to the registry (a name can be registered once)."""
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is already registered")
    if method.role not in ROLES:
        raise ValueError(f"method {method.name!r}: role {method.role!r} is not one of {ROLES}")
    # A hex colour needs no matplotlib; any other is checked now, not by the figures after the training.
    if not re.fullmatch(r"#(?:[0-9a-fA-F]{3,4}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8})", method.colour):
        from matplotlib.colors import is_color_like

        if not is_color_like(method.colour):
            raise ValueError(f"method {method.name!r}: colour {method.colour!r} is not a colour matplotlib draws")
    own = {o.name: o for o in method.options}
    strange = [c for c in method.run_columns if c not in own]
    if strange:
        raise ValueError(f"method {method.name!r}: run column {strange[0]!r} is not one of its options")
    strange = [o for o in method.variant_options if o not in own or o in method.run_columns]
    if strange:
        raise ValueError(f"method {method.name!r}: variant option {strange[0]!r} is not one of its options without a "
                         "run column")
    declare_method_options(method.name, method.options)
    try:
        for column, kind in method.run_columns.items():
            add_run_column(column, kind, method.name, own[column].default)
    except ValueError:
        _forget(method)
        raise
    add_method_style(method.name, method.label, method.colour, method.role)
    add_method_variants(method.name, {o: own[o].default for o in method.variant_options})
    METHODS[method.name] = method
    return method


def unregister_method(name: str) -> None:
    """Remove a training method (for methods registered only for a while, e.g. in tests)."""
    method = METHODS.pop(name, None)
    if method is not None:
        _forget(method)


def _forget(method: TrainingMethod) -> None:
    forget_method_options(method.name)
    remove_method_style(method.name)
    remove_method_variants(method.name)
    for column in method.run_columns:
        remove_run_column(column, method.name)


def get_method(name: str) -> TrainingMethod:
    """A registered method; unknown names are rejected with the valid ones."""
    if name not in METHODS:
        raise LoafingError(f"unknown method {name!r}; valid choices: {', '.join(METHODS)}")
    return METHODS[name]


def check_method(config: TrainConfig, device: torch.device | None = None, world: World = World()) -> None:
    """Reject, before any work, what the chosen method cannot run with: `--plan` if it cannot train a sub-network
    alone, and whatever its own check refuses (its options themselves are checked with the configuration)."""
    method = get_method(config.method)
    if config.plan and not method.trains_plan:
        able = [m.name for m in METHODS.values() if m.trains_plan]
        raise LoafingError(f"--plan needs --method {' or '.join(able)}")
    if method.check is not None:
        method.check(with_method_defaults(config), device, world)


def trained_plan(model: StagedModel, config: TrainConfig) -> Plan | None:
    """The sub-network a run trains alone (`--plan`), checked against the model; None for the whole network."""
    if not config.plan:
        return None
    plan = parse_plan(config.plan)
    model.check_plan(plan)
    return plan


def require_residuals(model: StagedModel, what: str) -> None:
    """Refuse, before training, a model that cannot run a block's residual branch on its own."""
    if type(model).residual is StagedModel.residual:
        raise LoafingError(f"{what} needs a model that can run a block's residual branch on its own; "
                           f"{type(model).__name__} cannot")
