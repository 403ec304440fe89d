"""A throw-away training method, all of it in this one file: cross-entropy with smoothed labels, with its own
option (`--smoothing`), its own run column, and a setting it refuses. Importing it registers it."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from loafing.config import OptionSpec, Range
from loafing.errors import LoafingError
from loafing.methods import StepResult, TrainingMethod, TrainingStep, register_method
from loafing.schema import FLOAT


def build(model, config, rng) -> TrainingStep:
    """CE of the main network against labels smoothed by the method's own option."""
    smoothing = config.method_options["smoothing"]

    def loss(x: torch.Tensor, y: torch.Tensor) -> StepResult:
        ce = F.cross_entropy(model(x), y, label_smoothing=smoothing)
        return StepResult(ce, ce, torch.zeros((), device=x.device))
    return TrainingStep(loss)


def check(config, device, world) -> None:
    """Label smoothing and mixed precision are not tried together here."""
    if config.amp != "none":
        raise LoafingError("--method smoothed runs in float32 only; drop --amp")


register_method(TrainingMethod(
    "smoothed", "Label smoothing", "#17becf", "CE with labels smoothed by --smoothing", build,
    options=(OptionSpec("smoothing", float, 0.1, "smoothed: label smoothing of the CE.", Range(0, 1)),),
    run_columns={"smoothing": FLOAT}, check=check))
