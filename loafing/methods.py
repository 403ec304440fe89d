"""Training methods: a registry of per-step losses. Common training (CT) and stimulative training (ST) are
the first two entries; a new method is one `register_method(TrainingMethod(...))`.

A method's `build(model, config, rng)` returns the step it trains with: a function from one batch to its
losses, plus any training-only modules (auxiliary heads) that the optimizer updates and the checkpoint
keeps, but that `measure`, `destruct` and the figures never see.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from loafing.config import TrainConfig, config_fields
from loafing.errors import LoafingError
from loafing.models import StagedModel
from loafing.plans import SAMPLING_RULES, Plan, parse_plan, restricted_ordered_space
from loafing.schema import TEXT, add_run_column, remove_run_column


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
    """A registered training method: its step, how figures show it, and the options only it reads."""

    name: str
    label: str  # its name in figures and tables
    colour: str  # its colour in figures
    description: str
    build: Callable[[StagedModel, TrainConfig, random.Random], TrainingStep]
    options: tuple[str, ...] = ()  # TrainConfig fields that only this method (and others naming them) reads
    run_columns: dict[str, str] = field(default_factory=dict)  # option -> column type, added to every table
    relative_cost: float = 1.0  # training time relative to CT, for rough cost estimates (--dry-run) only


# ---------------------------------------------------------------- losses


def ct_loss(model: StagedModel, x: torch.Tensor, y: torch.Tensor, plan: Plan | None = None) -> StepResult:
    """Common training: cross-entropy of the trained network (the main one, or `plan` trained alone)."""
    ce = F.cross_entropy(model(x, plan), y)
    return StepResult(ce, ce, torch.zeros((), device=x.device))


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(p_teacher || p_student), batch mean, with the teacher detached."""
    return F.kl_div(F.log_softmax(student_logits, 1), F.softmax(teacher_logits.detach(), 1),
                    reduction="batchmean")


def st_loss_simple(model: StagedModel, x: torch.Tensor, y: torch.Tensor, plan: Plan, lam: float) -> StepResult:
    """ST as written in Alg. 1: a main forward, then a separate forward of the sampled sub-network."""
    main_logits = model(x)
    ce = F.cross_entropy(main_logits, y)
    kl = kl_to_teacher(model.forward_without_bn_updates(x, plan), main_logits)
    return StepResult(ce + lam * kl, ce, kl)


def st_loss_shared(model: StagedModel, x: torch.Tensor, y: torch.Tensor, plan: Plan, lam: float) -> StepResult:
    """ST in one graph: the common prefix once, then shared blocks on both batches stacked (same loss, gradients)."""
    main_logits, sub_logits = model.forward_with_subnetwork(x, plan)
    ce = F.cross_entropy(main_logits, y)
    kl = kl_to_teacher(sub_logits, main_logits)
    return StepResult(ce + lam * kl, ce, kl)


ST_LOSSES: dict[str, Callable[..., StepResult]] = {"shared": st_loss_shared, "simple": st_loss_simple}


# ---------------------------------------------------------------- the built-in methods


def trained_plan(model: StagedModel, config: TrainConfig) -> Plan | None:
    """The sub-network a run trains alone (`--plan`), checked against the model; None for the whole network."""
    if not config.plan:
        return None
    plan = parse_plan(config.plan)
    model.check_plan(plan)
    return plan


def build_ct(model: StagedModel, config: TrainConfig, rng: random.Random) -> TrainingStep:
    """CT: cross-entropy of the main network, or of the `--plan` sub-network trained alone."""
    plan = trained_plan(model, config)
    return TrainingStep(lambda x, y: ct_loss(model, x, y, plan), uses_all_parameters=plan is None)


def require_residuals(model: StagedModel, what: str) -> None:
    """Refuse, before training, a model that cannot run a block's residual branch on its own."""
    if type(model).residual is StagedModel.residual:
        raise LoafingError(f"{what} needs a model that can run a block's residual branch on its own; "
                           f"{type(model).__name__} cannot")


def plan_sampler(model: StagedModel, config: TrainConfig, rng: random.Random) -> Callable[[], Plan]:
    """ST's sampler: a plan per step by the sampling rule, or from a seeded restricted ordered space (`--space-size`)."""
    if config.space_size is not None:
        if config.sampling != "ordered":
            raise LoafingError("--space-size restricts the ordered space; it needs --sampling ordered")
        space = restricted_ordered_space(model.layout, config.space_size, config.space_seed)
        return lambda: rng.choice(space)
    if config.sampling != "ordered" and model.layout.prefix_only:
        raise LoafingError(f"--sampling {config.sampling} drops blocks from inside a stage; this model's stages can "
                           "only be shortened from the end (--sampling ordered)")
    if config.sampling == "raw":
        require_residuals(model, "--sampling raw")
    rule = SAMPLING_RULES[config.sampling]
    return lambda: rule(model.layout, rng)


def build_st(model: StagedModel, config: TrainConfig, rng: random.Random) -> TrainingStep:
    """ST (paper Eq. 1): CE of the main network + lam * KL(main || a sampled sub-network)."""
    sample, loss = plan_sampler(model, config, rng), ST_LOSSES[config.st_step]
    return TrainingStep(lambda x, y: loss(model, x, y, sample(), config.lam))


METHODS: dict[str, TrainingMethod] = {}


def register_method(method: TrainingMethod) -> TrainingMethod:
    """Add a training method to the registry (a name can be registered once)."""
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is already registered")
    names = {f.name for f in config_fields()}
    unknown = [o for o in (*method.options, *method.run_columns) if o not in names]
    if unknown:
        raise ValueError(f"method {method.name!r}: {unknown[0]!r} is not a TrainConfig field")
    for column, kind in method.run_columns.items():
        add_run_column(column, kind, method.name)
    METHODS[method.name] = method
    return method


def unregister_method(name: str) -> None:
    """Remove a training method (for methods registered only for a while, e.g. in tests)."""
    method = METHODS.pop(name, None)
    for column in method.run_columns if method else ():
        remove_run_column(column)


def get_method(name: str) -> TrainingMethod:
    """A registered method; unknown names are rejected with the valid ones."""
    if name not in METHODS:
        raise LoafingError(f"unknown method {name!r}; valid choices: {', '.join(METHODS)}")
    return METHODS[name]


def check_method_options(config: TrainConfig) -> None:
    """Reject a method option set away from its default for a method that does not read it."""
    defaults = TrainConfig()
    own = set(get_method(config.method).options)
    for option in dict.fromkeys(o for m in METHODS.values() for o in m.options):
        if option not in own and getattr(config, option) != getattr(defaults, option):
            owners = [m.name for m in METHODS.values() if option in m.options]
            raise LoafingError(f"--{option.replace('_', '-')} needs --method {' or '.join(owners)}")


register_method(TrainingMethod(
    "ct", "CT", "#4c72b0", "common training: cross-entropy of the main network (or of --plan alone)",
    build_ct, options=("plan",)))
register_method(TrainingMethod(
    "st", "ST", "#c44e52", "stimulative training: CE + lam * KL(main || a sampled sub-network, --sampling rule)",
    build_st, options=("lam", "space_size", "space_seed", "st_step", "sampling"), run_columns={"sampling": TEXT},
    relative_cost=1.4))  # paper Table r4

import loafing.baselines  # noqa: E402,F401  (registers the appendix's baselines; it builds on this module)
