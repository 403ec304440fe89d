"""ST++: stimulative training with the ingredients of the authors' follow-up (Stimulative Training++) and released
code, each an option that can be switched on alone: several sub-networks per step, KL on normalized logits (KL−),
smaller inputs for the sub-networks, and the full network at a smaller resolution as a control.

At its defaults (one sub-network, raw logits, full-size inputs, sampled depth) ST++ is ST: the same step, the same
draws from the same generator, so the same weights. The restricted inter-stage space (`--sampling space3`) is a
sampling rule of ST's own (`loafing/plans.py`), so both methods take it.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from loafing.bn import frozen_bn_stats
from loafing.config import POSITIVE, OptionSpec, Range, TrainConfig
from loafing.distributed import World
from loafing.errors import LoafingError
from loafing.methods.ct_st import ST_OPTIONS, check_st, forward_with_subnetwork, kl_to_teacher, plan_sampler
from loafing.methods.registry import StepResult, TrainingMethod, TrainingStep, get_method, register_method
from loafing.models import StagedModel
from loafing.plans import Plan
from loafing.schema import FLOAT, OPTIONAL_INT, TEXT

REDUCTIONS = ("mean", "sum")  # how the K sub-networks' KL terms are combined
LOGITS = ("raw", "normalized")  # what the KL (or the main network's CE) is taken on
SUB_DEPTHS = ("sampled", "full")  # a sampled sub-network, or the main network itself (the resolution-only control)
LAYER_NORM_EPS = 1e-7  # the official code's


@dataclass(frozen=True)
class Distillation:
    """How ST++ turns the main and sub-network logits into its loss (the options that are not about sampling)."""

    reduction: str = "mean"
    kl_logits: str = "raw"
    ce_logits: str = "raw"
    amplitude: float = 1.0
    temperature: float = 1.0


def normalized_logits(logits: torch.Tensor, amplitude: float) -> torch.Tensor:
    """KL−'s logits: a layer norm over the classes without parameters, times `amplitude`."""
    return F.layer_norm(logits, logits.shape[-1:], eps=LAYER_NORM_EPS) * amplitude


def st_plus_terms(main_logits: torch.Tensor, sub_logits: list[torch.Tensor], y: torch.Tensor, lam: float,
                  how: Distillation) -> StepResult:
    """CE of the main network (on raw or normalized logits) + lam * the K sub-networks' KL to the detached main
    network (mean or sum over them), each KL at temperature T (times T^2) on raw or normalized logits."""
    def kl_input(logits: torch.Tensor) -> torch.Tensor:
        return normalized_logits(logits, how.amplitude) if how.kl_logits == "normalized" else logits
    ce_input = normalized_logits(main_logits, how.amplitude) if how.ce_logits == "normalized" else main_logits
    ce = F.cross_entropy(ce_input, y)
    t = how.temperature
    teacher = kl_input(main_logits) / t
    kls = torch.stack([kl_to_teacher(kl_input(s) / t, teacher) * (t * t) for s in sub_logits])
    kl = kls.mean() if how.reduction == "mean" else kls.sum()
    return StepResult(ce + lam * kl, ce, kl)


def forward_main_and_subnetworks(model: StagedModel, x: torch.Tensor, subs: list[tuple[Plan, torch.Tensor]],
                                 shared: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Main logits on `x` and each (plan, input)'s logits, equal to separate forwards in train mode (the
    sub-networks normalized by their own batch statistics, leaving the running ones to the main network).

    Shared: one full-size sub-network runs ST's stacked step; with several, each full-size one starts from the
    main network's activation where its plan leaves the main one (the blocks before run once); a resized input
    shares nothing and runs on its own."""
    if shared and len(subs) == 1 and subs[0][1] is x:
        main_logits, sub_logits = forward_with_subnetwork(model, x, subs[0][0])
        return main_logits, [sub_logits]
    main_seq = model.layout.main_plan.sequence()
    if shared:
        activations = [model.stem(x)]  # after the stem and each of the main network's blocks
        for b in main_seq:
            activations.append(model.run_step(b, activations[-1]))
        main_logits = model.head(activations[-1])
    else:
        main_logits = model(x)
    sub_logits = []
    with frozen_bn_stats(model):
        for plan, inputs in subs:
            if not (shared and inputs is x):
                sub_logits.append(model(inputs, plan))
                continue
            model.check_plan(plan)
            seq = plan.sequence()
            common = next((i for i, (a, b) in enumerate(zip(seq, main_seq)) if a != b), min(len(seq), len(main_seq)))
            h = activations[common]
            for b in seq[common:]:
                h = model.run_step(b, h)
            sub_logits.append(model.head(h))
    return main_logits, sub_logits


def resized_input(x: torch.Tensor, min_fraction: float, rng: random.Random) -> torch.Tensor:
    """`x` resized (bilinear, antialiased) to a random side in [min_fraction * side, side], aspect kept; `x` itself
    when the draw is its own side. The model normalizes its input, so a resized batch is normalized once."""
    h, w = x.shape[-2:]
    side = rng.randint(max(1, int(min_fraction * h)), h)
    if side == h:
        return x
    return F.interpolate(x, size=(side, max(1, round(w * side / h))), mode="bilinear", align_corners=False,
                         antialias=True)


def build_st_plus(model: StagedModel, config: TrainConfig, rng: random.Random) -> TrainingStep:
    """ST++: per step K sub-networks (sampled plans, or the main network with --sub-depth full), each on its own
    resize of the batch (--sub-resize-min below 1), distilled from the main network (raw or normalized logits)."""
    options = config.method_options
    main_plan = model.layout.main_plan
    sample = plan_sampler(model, config, rng) if options["sub_depth"] == "sampled" else (lambda: main_plan)
    k, min_fraction, lam = options["subnets"], options["sub_resize_min"], options["lam"]
    shared = options["st_step"] == "shared"
    how = Distillation(options["subnet_reduction"], options["kl_logits"], options["ce_logits"], options["amplitude"],
                       options["temperature"])

    def loss(x: torch.Tensor, y: torch.Tensor) -> StepResult:
        subs = []
        for _ in range(k):  # draw by draw (plan, then side), so that K = 1 at full size draws exactly as ST does
            plan = sample()
            subs.append((plan, resized_input(x, min_fraction, rng) if min_fraction < 1 else x))
        main_logits, sub_logits = forward_main_and_subnetworks(model, x, subs, shared)
        return st_plus_terms(main_logits, sub_logits, y, lam, how)
    return TrainingStep(loss)


def check_st_plus(config: TrainConfig, device: torch.device | None, world: World) -> None:
    """What ST++ cannot run with: ST's refusals, and option combinations that would mean nothing."""
    check_st(config, device, world)
    options = config.method_options
    if options["sub_depth"] == "full":
        if options["sub_resize_min"] >= 1:
            raise LoafingError("--sub-depth full distils the main network into itself; it needs smaller inputs "
                               "(--sub-resize-min below 1)")
        if options["space_size"] is not None or options["sampling"] != "ordered":
            raise LoafingError("--sub-depth full samples no depth; drop --sampling and --space-size")
    if options["kl_logits"] == "raw":
        if options["ce_logits"] == "normalized":
            raise LoafingError("--ce-logits normalized (the official code's CE) needs --kl-logits normalized")
        if options["amplitude"] != 1.0:
            raise LoafingError("--amplitude scales normalized logits; it needs --kl-logits normalized")


ST_PLUS_OPTIONS = ST_OPTIONS + (
    OptionSpec("subnets", int, 1, "ST++: sub-networks sampled per step, each adding lam * KL (the official code's "
               "--multi_Snet; 6 there).", Range(1, 32)),
    OptionSpec("subnet_reduction", str, "mean", "ST++: combine the K KL terms by their mean (the expectation over "
               "sub-networks of the paper's analysis) | sum (what the official code's per-sub-network backward "
               "does).", choices=lambda: list(REDUCTIONS), what="reduction"),
    OptionSpec("kl_logits", str, "raw", "ST++: KL on raw logits | normalized (KL−: a layer norm over the classes "
               "without parameters, times --amplitude; the official code's --norm_kd).",
               choices=lambda: list(LOGITS), what="logits"),
    OptionSpec("ce_logits", str, "raw", "ST++: the main network's CE on raw logits | normalized (as the official "
               "code does with --norm_kd; needs --kl-logits normalized).", choices=lambda: list(LOGITS),
               what="logits"),
    OptionSpec("amplitude", float, 1.0, "ST++: scale of the normalized logits (--kl-logits normalized).", POSITIVE,
               unread=lambda c: "" if c.method_options["kl_logits"] == "normalized" else "raw logits are not scaled"),
    OptionSpec("temperature", float, 1.0, "ST++: temperature T of the KL (logits / T, KL times T^2).",
               Range(0, 100, low_open=True)),
    OptionSpec("sub_resize_min", float, 1.0, "ST++: each sub-network sees its own bilinear resize of the batch to a "
               "random side in [this * side, side]; 1: full size (the official code's Dtrans7: 0.43).",
               Range(0, 1, low_open=True)),
    OptionSpec("sub_depth", str, "sampled", "ST++: sub-networks of sampled depth | full (the main network at a "
               "smaller resolution: the resolution-only control; needs --sub-resize-min below 1).",
               choices=lambda: list(SUB_DEPTHS), what="sub-network depth"),
)


def st_plus_cost(options: Mapping[str, Any]) -> float:
    """Rough training time relative to CT: ST's extra per sub-network, scaled by its input area and doubled for the
    full-depth control (a sampled sub-network has about half the blocks)."""
    low = options["sub_resize_min"]
    mean_area = (1 + low + low * low) / 3  # the mean of side² for a side drawn uniformly from [low, 1]
    depth = 2.0 if options["sub_depth"] == "full" else 1.0
    return 1 + (get_method("st").relative_cost - 1) * options["subnets"] * mean_area * depth


register_method(TrainingMethod(
    "st++", "ST++", "#dd8452", "stimulative training with ST++'s ingredients: K sub-networks, KL on normalized "
    "logits, smaller inputs for the sub-networks, the resolution-only control (at its defaults: ST)",
    build_st_plus, role="stimulative", options=ST_PLUS_OPTIONS,
    # ST's columns; its own ingredients are told apart by the `variant` column, not one column each in every table.
    run_columns={"lam": FLOAT, "space_size": OPTIONAL_INT, "sampling": TEXT},
    variant_options=("subnets", "subnet_reduction", "kl_logits", "ce_logits", "amplitude", "temperature",
                     "sub_resize_min", "sub_depth"),
    check=check_st_plus, relative_cost=1.4, run_cost=st_plus_cost))
