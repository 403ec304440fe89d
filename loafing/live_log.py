"""Live training curves: each epoch's row of train_log.csv also written as TensorBoard scalars, into the run folder's
`tensorboard/`, so that `tensorboard --logdir runs/` shows a study's runs side by side while they train.

Optional: without the `tensorboard` package (`pip install loafing[tensorboard]`) nothing is written and nothing is
said. Only rank 0 writes. A scalar's step is its epoch number; a resumed run hides, through TensorBoard's purge
step, whatever an interrupted process wrote for the epochs it trains again, so every epoch shows once.
"""
from __future__ import annotations

import math
import numbers
import weakref
from pathlib import Path
from typing import Any, Mapping

FOLDER = "tensorboard"
EVENT_PREFIX = "events.out.tfevents."
# train_log.csv's columns and the tags they are shown under; TensorBoard groups a tag's section before the slash.
TAGS = {
    "loss": "train/loss", "ce": "train/ce", "kl": "train/kl", "lr": "train/lr",
    "test_top1_recalibrated": "test/top1_recalibrated", "test_top1_running_bn": "test/top1_running_bn",
    "test_loss_recalibrated": "test/loss_recalibrated", "test_loss_running_bn": "test/loss_running_bn",
    "seconds": "cost/seconds", "examples_per_s": "cost/examples_per_s", "peak_memory_mib": "cost/peak_memory_mib",
}
SECONDS_PER_STEP = "cost/seconds_per_step"  # the epoch's training seconds over its optimizer steps


def summary_writer_class() -> type | None:
    """torch's SummaryWriter, or None where the `tensorboard` package is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter


def epoch_scalars(row: Mapping[str, Any], steps: int) -> dict[str, float]:
    """The scalars of one train_log.csv row, by tag: its numeric columns that have a tag, and the time per step."""
    def number(value: Any) -> bool:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)

    scalars = {tag: float(row[column]) for column, tag in TAGS.items() if number(row.get(column))}
    if steps > 0 and number(row.get("seconds")) and math.isfinite(row["seconds"]):
        scalars[SECONDS_PER_STEP] = row["seconds"] / steps
    return scalars


class LiveLog:
    """The TensorBoard writer of one run folder, opened at the first epoch it records (a run that fails before
    finishing an epoch leaves no event file) and flushed after every epoch."""

    def __init__(self, out: str | Path, first_epoch: int, steps_per_epoch: int, enabled: bool = True) -> None:
        self.folder, self.first_epoch, self.steps_per_epoch = Path(out) / FOLDER, first_epoch, steps_per_epoch
        self.writer_class = summary_writer_class() if enabled else None
        self.writer: Any = None

    def _open(self) -> Any:
        if self.first_epoch == 1:  # a new run in this folder (--overwrite): the event files there are an older run's
            for stale in self.folder.glob(f"{EVENT_PREFIX}*"):
                stale.unlink(missing_ok=True)
        # Resumed: hide the epochs from first_epoch on that an interrupted process wrote before its checkpoint.
        writer = self.writer_class(str(self.folder), purge_step=self.first_epoch if self.first_epoch > 1 else None)
        weakref.finalize(self, writer.close)  # also after an interruption, when the run's frame is let go
        return writer

    def record(self, row: Mapping[str, Any]) -> None:
        """Write one epoch's row (its `epoch` is the step) and flush it to disk."""
        if self.writer_class is None:
            return
        if self.writer is None:
            self.writer = self._open()
        for tag, value in epoch_scalars(row, self.steps_per_epoch).items():
            self.writer.add_scalar(tag, value, global_step=int(row["epoch"]))
        self.writer.flush()


def live_log(run: Any, first_epoch: int) -> LiveLog:
    """The live log of a run being trained (a `loafing.training_run.Run`): written by rank 0 only."""
    return LiveLog(run.out, first_epoch, len(run.train_loader), enabled=run.world.is_main)
