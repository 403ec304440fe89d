"""EvalConfig: how a checkpoint's plans are evaluated, declared once for `measure`, `destruct`, `inside-vs-alone`
and the studies (a study file's `[evaluation]` table), with the range of every setting."""
from __future__ import annotations

from dataclasses import dataclass

from loafing.errors import LoafingError
from loafing.config import GRANULARITY_HELP
from loafing.options import AT_LEAST_1, SEED, OptionSpec, check_value, option, option_specs
from loafing.plans import GRANULARITIES

MAX_COMBOS = 200  # destruct: per number of deleted layers / swaps, the networks evaluated (a seeded sample where more)
CONFIRM_LIMIT = 10_000  # `loafing destruct` evaluates more destroyed networks than this only with --yes


def _spaces() -> list[str]:
    from loafing.plans import SPACES
    return list(SPACES)


@dataclass(frozen=True)
class EvalConfig:
    """Calibration set, recalibration, batch size, device and plan space of an evaluation."""

    calib_size: int = option(2000, "Training images used for BN recalibration.", range=AT_LEAST_1,
                             unread=lambda e: "" if e.recalibrate else "--no-recalibrate calibrates nothing")
    calib_seed: int = option(0, "Seed choosing the calibration subset (and sampled plans).", range=SEED)
    recalibrate: bool = option(True, "Recalibrate BN on the calibration images before evaluating each plan "
                               "(--no-recalibrate: the stored statistics).")
    calib_augment: bool = option(True, "Draw the calibration images with the training augmentation (crop, flip), "
                                 "the distribution BN's running statistics come from, as the paper's code does "
                                 "(--no-calib-augment: as evaluated).",
                                 unread=lambda e: "" if e.recalibrate else "--no-recalibrate calibrates nothing")
    batch_size: int = option(256, "Batch size of the evaluation.", range=AT_LEAST_1)
    device: str = option("auto", "auto | cpu | cuda | cuda:N.")
    space: str = option("ordered", "Plans to evaluate.", choices=_spaces, what="space")
    granularity: str | None = option(None, GRANULARITY_HELP + " Default: the checkpoint's (a network trained in "
                                     "one view is measured in the other as well).",
                                     choices=lambda: list(GRANULARITIES), what="granularity")

    def __post_init__(self) -> None:
        for spec in eval_option_specs():
            value = getattr(self, spec.name)
            if value is None and spec.default is None:
                continue
            if type(value) is not spec.kind and not (spec.kind is float and type(value) is int):
                raise LoafingError(f"evaluation setting {spec.name} must be {spec.kind.__name__}, got {value!r}")
            check_value(spec.flag, value, spec.range, spec.choices, spec.what)


def eval_option_specs() -> list[OptionSpec]:
    """The command-line options generated from EvalConfig."""
    return option_specs(EvalConfig)
