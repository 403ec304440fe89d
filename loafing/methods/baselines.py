"""The appendix's other ways to train a residual network (Appendix F.1, Table r3), one registered method each.

Auxiliary heads are training-only: they live in the method's modules (optimized, checkpointed), never in
the model, so `measure`, `destruct` and the figures see the same network as for CT. Where the paper is
silent, the choice is ours and said so here, in `--help` and in the README:

- heads: a "transforming head" is a 1x1 convolution to the last stage's width + BN + ReLU, global
  average pooling (the projected feature) and a linear classifier;
- stage and layer supervision: the appendix gives four stage coefficients for MobileNetV3, whose last
  (fifth) stage feeds the main classifier, so the heads follow every stage but the last; for a model with
  another number of stages the four coefficients are stretched linearly over its stages but the last;
- self-distillation: KD temperature `--kd-temperature` (3), KD scaled by T^2 as usual, the final
  classifier and the last stage's pooled feature are the (detached) teachers.
"""
from __future__ import annotations

import random
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import stochastic_depth

from loafing.config import POSITIVE, OptionSpec, Range, TrainConfig
from loafing.methods.registry import StepResult, TrainingMethod, TrainingStep, register_method, require_residuals
from loafing.models import StagedModel
from loafing.plans import Layout

STAGE_COEFFICIENTS = (0.13, 0.2, 0.27, 0.4)  # Appendix F.1: MobileNetV3's four supervised stages
SELF_DISTILLATION_WEIGHTS = {"ce": 0.8, "kd": 0.2, "feature": 0.02}  # Appendix F.1
SD_MODES = ("batch", "row")


# ---------------------------------------------------------------- stochastic depth


def survival_probabilities(layout: Layout, last: float) -> dict[int, float]:
    """Huang et al.'s linear rule, p_l = 1 - l/L (1 - p_L) over the L body blocks, for every block that may be
    dropped: skippable ones, except the first of each stage (Appendix F.1)."""
    n = layout.n_blocks
    firsts = {stage[0] for stage in layout.stages}
    return {b: 1 - b / n * (1 - last) for b in layout.main_plan.sequence() if b in layout.skippable - firsts}


def stochastic_depth_logits(model: StagedModel, x: torch.Tensor, survival: dict[int, float], mode: str,
                            rng: random.Random) -> torch.Tensor:
    """One training forward with blocks dropped: a surviving branch is scaled by 1/p, so that the test-time
    network is the plain one. Batch mode skips a dropped block's computation altogether."""
    x = model.stem(x)
    for b in model.layout.main_plan.sequence():
        p = survival.get(b)
        if p is None:
            x = model.block(b)(x)
        elif mode == "batch":
            if rng.random() < p:
                x = model.residual(b, x, lambda f, p=p: f / p)
            # A dropped block is its identity shortcut: the branch adds nothing.
        else:
            x = model.residual(b, x, lambda f, p=p: stochastic_depth(f, 1 - p, "row", training=True))
    return model.head(x)


def build_stochastic_depth(model: StagedModel, config: TrainConfig, rng: random.Random) -> TrainingStep:
    """Stochastic depth: cross-entropy of a network whose droppable blocks survive with linearly falling p."""
    require_residuals(model, "stochastic-depth")
    survival = survival_probabilities(model.layout, config.method_options["sd_survival"])
    mode = config.method_options["sd_mode"]

    def loss(x: torch.Tensor, y: torch.Tensor) -> StepResult:
        ce = F.cross_entropy(stochastic_depth_logits(model, x, survival, mode, rng), y)
        return StepResult(ce, ce, torch.zeros((), device=x.device))
    return TrainingStep(loss, uses_all_parameters=False)


# ---------------------------------------------------------------- auxiliary heads


class TransformingHead(nn.Module):
    """1x1 conv to `width` channels + BN + ReLU, global average pooling (the feature), then a linear classifier."""

    def __init__(self, in_channels: int, width: int, num_classes: int) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Conv2d(in_channels, width, 1, bias=False), nn.BatchNorm2d(width),
                                     nn.ReLU(inplace=True))
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature = torch.flatten(F.adaptive_avg_pool2d(self.project(x), 1), 1)
        return feature, self.classifier(feature)


def block_outputs(model: StagedModel, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The main network's logits and the output of every body block, in order (what auxiliary heads see)."""
    outputs = []
    x = model.stem(x)
    for b in model.layout.main_plan.sequence():
        x = model.block(b)(x)
        outputs.append(x)
    return model.head(x), outputs


def block_channels(model: StagedModel) -> dict[int, int]:
    """The number of output channels of every body block (from one small forward that changes nothing)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            probe = torch.zeros(1, 3, 32, 32, device=model.input_mean.device)
            _, outputs = block_outputs(model, probe)
    finally:
        model.train(was_training)
    return {b: out.shape[1] for b, out in zip(model.layout.main_plan.sequence(), outputs)}


def stage_coefficients(n: int) -> list[float]:
    """The appendix's four stage coefficients, stretched linearly over `n` supervised stages (as given for 4)."""
    if n == 1:
        return [STAGE_COEFFICIENTS[-1]]
    return np.interp(np.linspace(0, 3, n), range(4), STAGE_COEFFICIENTS).tolist()


def supervised_blocks(layout: Layout, per_layer: bool) -> dict[int, float]:
    """Block -> loss coefficient of its auxiliary head: after each stage but the last (the main classifier's),
    or after each of their blocks with the stage's coefficient divided by its number of blocks."""
    stages = layout.stages[:-1]
    weights = {}
    for stage, c in zip(stages, stage_coefficients(len(stages))):
        if per_layer:
            weights.update({b: c / len(stage) for b in stage})
        else:
            weights[stage[-1]] = c
    return weights


def auxiliary_heads(model: StagedModel, blocks: list[int], num_classes: int) -> nn.ModuleDict:
    """A transforming head after each of `blocks`, projecting to the last stage's width."""
    channels = block_channels(model)
    width = channels[model.layout.main_plan.sequence()[-1]]
    return nn.ModuleDict({str(b): TransformingHead(channels[b], width, num_classes) for b in blocks})


def build_supervision(per_layer: bool) -> Callable[[StagedModel, TrainConfig, random.Random], TrainingStep]:
    """CT plus a cross-entropy loss on an auxiliary head after each stage (or layer), weighted per Appendix F.1."""
    def build(model: StagedModel, config: TrainConfig, rng: random.Random) -> TrainingStep:
        weights = supervised_blocks(model.layout, per_layer)
        heads = auxiliary_heads(model, list(weights), config.num_classes)

        def loss(x: torch.Tensor, y: torch.Tensor) -> StepResult:
            logits, outputs = block_outputs(model, x)
            ce = F.cross_entropy(logits, y)
            total = ce
            for b, out in zip(model.layout.main_plan.sequence(), outputs):
                if b in weights:
                    total = total + weights[b] * F.cross_entropy(heads[str(b)](out)[1], y)
            return StepResult(total, ce, torch.zeros((), device=x.device))
        return TrainingStep(loss, heads)
    return build


def build_self_distillation(model: StagedModel, config: TrainConfig, rng: random.Random) -> TrainingStep:
    """Be Your Own Teacher: CE on every classifier, KD and feature losses from the final one to each stage's head."""
    stage_ends = [stage[-1] for stage in model.layout.stages[:-1]]
    heads = auxiliary_heads(model, stage_ends, config.num_classes)
    w, t = SELF_DISTILLATION_WEIGHTS, config.method_options["kd_temperature"]

    def loss(x: torch.Tensor, y: torch.Tensor) -> StepResult:
        logits, outputs = block_outputs(model, x)
        final_feature = torch.flatten(F.adaptive_avg_pool2d(outputs[-1], 1), 1).detach()
        teacher = F.softmax(logits.detach() / t, 1)
        ce = F.cross_entropy(logits, y)
        ces, kd, feature = ce, torch.zeros((), device=x.device), torch.zeros((), device=x.device)
        for b, out in zip(model.layout.main_plan.sequence(), outputs):
            if str(b) in heads:
                head_feature, head_logits = heads[str(b)](out)
                ces = ces + F.cross_entropy(head_logits, y)
                kd = kd + t * t * F.kl_div(F.log_softmax(head_logits / t, 1), teacher, reduction="batchmean")
                feature = feature + (head_feature - final_feature).pow(2).sum(1).mean()
        total = w["ce"] * ces + w["kd"] * kd + w["feature"] * feature
        return StepResult(total, ce, kd)
    return TrainingStep(loss, heads)


SD_OPTIONS = (
    OptionSpec("sd_survival", float, 0.9, "stochastic-depth: survival probability of the last block; it falls linearly "
               "from 1 over the body's blocks (Appendix F.1: 0.9).", Range(0, 1, low_open=True)),
    OptionSpec("sd_mode", str, "batch", "stochastic-depth: batch (drop a block for the whole mini-batch, as Huang et "
               "al.) | row (per sample, torchvision.ops.stochastic_depth's row mode).", choices=lambda: list(SD_MODES),
               what="stochastic-depth mode"),
)
KD_OPTIONS = (OptionSpec("kd_temperature", float, 3.0, "self-distillation: softmax temperature of the KD loss (the "
                         "paper gives none; 3 is our choice, a usual KD temperature).", POSITIVE),)

# Relative costs: Table r3's training hours over CT's 16.91 h.
register_method(TrainingMethod(
    "stochastic-depth", "Stochastic depth", "#55a868",
    "stochastic depth (Huang et al.): droppable blocks survive with p falling linearly to --sd-survival",
    build_stochastic_depth, options=SD_OPTIONS, variant_options=("sd_survival", "sd_mode"), relative_cost=16.9 / 16.91))
register_method(TrainingMethod(
    "self-distillation", "Self-distillation", "#8172b2",
    "Be Your Own Teacher: 0.8 CE of every classifier + 0.2 KD + 0.02 feature loss, a head after each stage",
    build_self_distillation, options=KD_OPTIONS, variant_options=("kd_temperature",), relative_cost=26.8 / 16.91))
register_method(TrainingMethod(
    "layer-supervision", "CT+layer supervision", "#ccb974",
    "CT + CE of an auxiliary head after each layer of every stage but the last",
    build_supervision(per_layer=True), relative_cost=23.3 / 16.91))
register_method(TrainingMethod(
    "stage-supervision", "CT+stage supervision", "#64b5cd",
    "CT + CE of an auxiliary head after every stage but the last (coefficients 0.13, 0.2, 0.27, 0.4)",
    build_supervision(per_layer=False), relative_cost=19.3 / 16.91))
