"""Common training (CT) and stimulative training (ST, paper Eq. 1 and Alg. 1): the paper's two methods.

ST's step runs the main network and a sampled sub-network on the same batch; its shared form does it in one
graph (`forward_with_subnetwork`), the common prefix once and the shared blocks on the two batches stacked.
"""
from __future__ import annotations

import random
from typing import Callable

import torch
import torch.nn.functional as F

from loafing.bn import frozen_bn_stats
from loafing.config import NON_NEGATIVE, SEED, OptionSpec, TrainConfig
from loafing.distributed import World
from loafing.errors import LoafingError
from loafing.methods.registry import (StepResult, TrainingMethod, TrainingStep, register_method, require_residuals,
                                      trained_plan)
from loafing.models import StagedModel, get_spec
from loafing.plans import ORDERED_RULES, SAMPLING_RULES, Plan, restricted_ordered_space, space3_depths
from loafing.schema import FLOAT, OPTIONAL_INT, TEXT
from loafing.segments import stacked_batches


def ct_loss(model: StagedModel, x: torch.Tensor, y: torch.Tensor, plan: Plan | None = None) -> StepResult:
    """Common training: cross-entropy of the trained network (the main one, or `plan` trained alone)."""
    ce = F.cross_entropy(model(x, plan), y)
    return StepResult(ce, ce, torch.zeros((), device=x.device))


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(p_teacher || p_student), batch mean, with the teacher detached."""
    return F.kl_div(F.log_softmax(student_logits, 1), F.softmax(teacher_logits.detach(), 1),
                    reduction="batchmean")


def forward_with_subnetwork(model: StagedModel, x: torch.Tensor, plan: Plan) -> tuple[torch.Tensor, torch.Tensor]:
    """Main and `plan` logits in one graph, the same as two separate forwards in train mode.

    Blocks on the common prefix run once. After that, every block both networks run (for an
    ordered sub-network: all of its remaining blocks, and the head) runs once on the two
    batches stacked, each half normalized by BN with its own batch statistics, or, where the
    two inputs differ in width (a DenseNet after a shortened dense block), once on each. Only
    the main network updates running statistics.
    """
    model.check_plan(plan)
    sub_seq = plan.sequence()
    n = x.shape[0]
    main = sub = model.stem(x)
    stacked = None  # torch.cat([main, sub]) while consecutive blocks run on both
    i = 0  # position of the sub-network's next block
    for b in model.layout.main_plan.sequence():
        block = model.block(b)
        if i < len(sub_seq) and sub_seq[i] == b:
            i += 1
            if main is sub:
                main = sub = block(main)
                continue
            if main.shape != sub.shape:  # inputs of different widths (a shortened DenseNet block) cannot stack
                main, stacked = block(main), None
                with frozen_bn_stats(model):
                    sub = block(sub)
                continue
            with stacked_batches(n):
                stacked = block(torch.cat([main, sub]) if stacked is None else stacked)
            main, sub = stacked[:n], stacked[n:]
        else:
            main, stacked = block(main), None
    with frozen_bn_stats(model):  # blocks of a plan that reorders the main network's
        for b in sub_seq[i:]:
            sub, stacked = model.run_step(b, sub), None
    if main.shape != sub.shape:
        with frozen_bn_stats(model):
            sub_logits = model.head(sub)
        return model.head(main), sub_logits
    # The head always runs stacked, even on one shared input, so each half gets its own dropout mask.
    with stacked_batches(n):
        logits = model.head(torch.cat([main, sub]) if stacked is None else stacked)
    return logits[:n], logits[n:]


def st_loss_simple(model: StagedModel, x: torch.Tensor, y: torch.Tensor, plan: Plan, lam: float) -> StepResult:
    """ST as written in Alg. 1: a main forward, then a separate forward of the sampled sub-network (in train mode,
    normalized by its own batch statistics but leaving the running ones to the main network)."""
    main_logits = model(x)
    ce = F.cross_entropy(main_logits, y)
    with frozen_bn_stats(model):
        sub_logits = model(x, plan)
    kl = kl_to_teacher(sub_logits, main_logits)
    return StepResult(ce + lam * kl, ce, kl)


def st_loss_shared(model: StagedModel, x: torch.Tensor, y: torch.Tensor, plan: Plan, lam: float) -> StepResult:
    """ST in one graph: the common prefix once, then shared blocks on both batches stacked (same loss, gradients)."""
    main_logits, sub_logits = forward_with_subnetwork(model, x, plan)
    ce = F.cross_entropy(main_logits, y)
    kl = kl_to_teacher(sub_logits, main_logits)
    return StepResult(ce + lam * kl, ce, kl)


ST_LOSSES: dict[str, Callable[..., StepResult]] = {"shared": st_loss_shared, "simple": st_loss_simple}


def build_ct(model: StagedModel, config: TrainConfig, rng: random.Random) -> TrainingStep:
    """CT: cross-entropy of the main network, or of the `--plan` sub-network trained alone."""
    plan = trained_plan(model, config)
    return TrainingStep(lambda x, y: ct_loss(model, x, y, plan), uses_all_parameters=plan is None)


def plan_sampler(model: StagedModel, config: TrainConfig, rng: random.Random) -> Callable[[], Plan]:
    """ST's sampler: a plan per step by the sampling rule, or from a seeded restricted ordered space
    (`--space-size`)."""
    options = config.method_options
    if options["space_size"] is not None:
        space = restricted_ordered_space(model.layout, options["space_size"], options["space_seed"])
        return lambda: rng.choice(space)
    sampling = options["sampling"]
    if sampling not in ORDERED_RULES and model.layout.prefix_only:
        raise LoafingError(f"--sampling {sampling} drops blocks from inside a stage; this model's stages can "
                           f"only be shortened from the end (--sampling {' or '.join(ORDERED_RULES)})")
    if sampling == "raw":
        require_residuals(model, "--sampling raw")
    rule = SAMPLING_RULES[sampling]
    return lambda: rule(model.layout, rng)


def build_st(model: StagedModel, config: TrainConfig, rng: random.Random) -> TrainingStep:
    """ST (paper Eq. 1): CE of the main network + lam * KL(main || a sampled sub-network)."""
    sample, loss = plan_sampler(model, config, rng), ST_LOSSES[config.method_options["st_step"]]
    lam = config.method_options["lam"]
    return TrainingStep(lambda x, y: loss(model, x, y, sample(), lam))


def check_st(config: TrainConfig, device: torch.device | None, world: World) -> None:
    """What ST cannot run with: a restricted space of other than ordered plans, SyncBatchNorm on stacked batches."""
    options = config.method_options
    if not get_spec(config.model, config.model_args, config.granularity).layout().skippable:
        raise LoafingError(f"{config.model} has no skippable block (each of its blocks changes width or resolution), "
                           "so its only sub-network is the main network and ST has nothing to sample; train it "
                           "with --method ct")
    if options["space_size"] is not None:
        if options["sampling"] != "ordered":
            raise LoafingError("--space-size restricts the ordered space; it needs --sampling ordered")
        layout = get_spec(config.model, config.model_args, config.granularity).layout()
        restricted_ordered_space(layout, options["space_size"], options["space_seed"])
    if options["sampling"] == "space3":
        space3_depths(get_spec(config.model, config.model_args, config.granularity).layout())
    if config.sync_bn and options["st_step"] == "shared":
        raise LoafingError("--sync-bn cannot normalize the shared ST step's two stacked batches separately; "
                           "pass --st-step simple with --sync-bn")


ST_OPTIONS = (
    OptionSpec("lam", float, 1.0, "ST: weight of the KL loss (paper Eq. 1).", NON_NEGATIVE),
    OptionSpec("space_size", int, None, "ST: sample from a seeded subset of this many ordered plans (always the "
               "smallest and the main)."),
    OptionSpec("space_seed", int, 0, "ST: seed choosing the restricted space's plans.", SEED,
               unread=lambda c: "" if c.method_options["space_size"] is not None else "it seeds --space-size's choice"),
    OptionSpec("st_step", str, "shared", "ST: shared (common prefix once, then the blocks both networks run on the two "
               "batches stacked) | simple (two full forwards).", choices=lambda: list(ST_LOSSES), what="ST step"),
    OptionSpec("sampling", str, "ordered", "ST: sampling rule (paper Sec. 3.3): ordered (per stage the first d "
               "blocks) | stochastic (per stage any subset of the skippable blocks, order kept) | raw (Veit et al.'s "
               "paths: each skippable block runs its residual branch alone or not at all) | space3 (the official "
               "code's restricted space, four-stage networks: at most 1 block dropped in stage 2 and 3 in stage 3).",
               choices=lambda: list(SAMPLING_RULES), what="sampling rule"),
)

register_method(TrainingMethod(
    "ct", "CT", "#4c72b0", "common training: cross-entropy of the main network (or of --plan alone)",
    build_ct, role="conventional", trains_plan=True))
register_method(TrainingMethod(
    "st", "ST", "#c44e52", "stimulative training: CE + lam * KL(main || a sampled sub-network, --sampling rule)",
    build_st, role="stimulative", options=ST_OPTIONS,
    run_columns={"lam": FLOAT, "space_size": OPTIONAL_INT, "sampling": TEXT}, check=check_st,
    relative_cost=1.4))  # paper Table r4
