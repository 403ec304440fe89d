"""EvalConfig: how a checkpoint's plans are evaluated, declared once for `measure`, `destruct`, `inside-vs-alone`
and the studies (a study file's `[evaluation]` table), with the range of every setting."""
from __future__ import annotations

from dataclasses import dataclass

from loafing.config import AT_LEAST_1, SEED, option, option_specs, OptionSpec


@dataclass(frozen=True)
class EvalConfig:
    """Calibration set, recalibration, batch size, device and plan space of an evaluation."""

    calib_size: int = option(2000, "Training images used for BN recalibration.", range=AT_LEAST_1)
    calib_seed: int = option(0, "Seed choosing the calibration subset (and sampled plans).", range=SEED)
    recalibrate: bool = option(True, "Recalibrate BN on the calibration images before evaluating each plan "
                               "(--no-recalibrate: the stored statistics).")
    batch_size: int = option(256, "Batch size of the evaluation.", range=AT_LEAST_1)
    device: str = option("auto", "auto | cpu | cuda | cuda:N.")
    space: str = option("ordered", "Plans to evaluate (see `loafing measure --help`).")


def eval_option_specs() -> list[OptionSpec]:
    """The command-line options generated from EvalConfig."""
    return option_specs(EvalConfig)
