"""Live training curves: the TensorBoard scalars a run writes beside train_log.csv, read back as TensorBoard would."""
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from loafing.config import TrainConfig
from loafing.distributed import World
from loafing.live_log import SECONDS_PER_STEP, TAGS, live_log
from loafing.run_state import load_config
from loafing.train import train

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

TRAIN_SIZE, BATCH = 64, 32


def tiny_config(out: Path, epochs: int = 2) -> TrainConfig:
    """A few seconds of CT on 64 digits images: two optimizer steps per epoch."""
    return TrainConfig(model="resnet20-cifar", dataset="digits", method="ct", epochs=epochs, lr=0.1, seed=0,
                       device="cpu", train_size=TRAIN_SIZE, batch_size=BATCH, monitor_calib_size=32, out=str(out))


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of a run's event files as (step, value) pairs, as TensorBoard's loader sees them (purges
    applied)."""
    accumulator = event_accumulator.EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def assert_scalars_are_the_log(run: Path) -> None:
    """Each epoch of train_log.csv once under each tag, with the CSV's value (TensorBoard stores float32)."""
    log, shown = pd.read_csv(run / "train_log.csv"), scalars(run)
    assert set(shown) == set(TAGS.values()) | {SECONDS_PER_STEP}
    epochs = log["epoch"].tolist()
    for column, tag in TAGS.items():
        assert shown[tag] == [(e, np.float32(v)) for e, v in zip(epochs, log[column])], tag
    per_step = log["seconds"] / (TRAIN_SIZE // BATCH)
    assert shown[SECONDS_PER_STEP] == [(e, np.float32(v)) for e, v in zip(epochs, per_step)]


def test_a_run_writes_its_log_as_tensorboard_scalars(tmp_path):
    """Each epoch's row of train_log.csv, every logged column, under its tag at the epoch's step."""
    train(tiny_config(tmp_path / "run"), progress=False)
    assert_scalars_are_the_log(tmp_path / "run")
    assert pd.read_csv(tmp_path / "run" / "train_log.csv")["epoch"].tolist() == [1, 2]


@pytest.mark.parametrize("strikes", ["during the epoch", "before the epoch's checkpoint"])
def test_a_resumed_run_shows_each_epoch_once(tmp_path, interrupted_training, monkeypatch, strikes):
    """Ctrl-C during epoch 2, or after epoch 2's scalars were written but before its checkpoint (so the resumed
    process trains and writes epoch 2 again): TensorBoard shows epochs 1-3 once each, with the log's values."""
    out = tmp_path / "run"
    if strikes == "during the epoch":
        interrupted_training(tiny_config(out, epochs=3), epoch=2)
    else:
        import loafing.train as train_module

        real = train_module.save_state

        def dies_before_epoch_2s_checkpoint(run, epoch, *args):
            if epoch == 2:
                raise KeyboardInterrupt
            real(run, epoch, *args)

        monkeypatch.setattr(train_module, "save_state", dies_before_epoch_2s_checkpoint)
        with pytest.raises(KeyboardInterrupt):
            train(tiny_config(out, epochs=3), progress=False)
        monkeypatch.setattr(train_module, "save_state", real)
        assert [step for step, _ in scalars(out)["train/loss"]] == [1, 2]  # written, though not checkpointed
    assert pd.read_csv(out / "train_log.csv")["epoch"].tolist() == [1]
    train(load_config(out), progress=False, resume=True)
    assert pd.read_csv(out / "train_log.csv")["epoch"].tolist() == [1, 2, 3]
    assert_scalars_are_the_log(out)


def test_a_new_run_over_an_old_one_shows_only_itself(tmp_path):
    """--overwrite: the older run's event files go, so its curves do not mix with the new run's."""
    train(tiny_config(tmp_path / "run", epochs=2), progress=False)
    train(tiny_config(tmp_path / "run", epochs=1), progress=False, overwrite=True)
    assert_scalars_are_the_log(tmp_path / "run")
    assert len(list((tmp_path / "run" / "tensorboard").iterdir())) == 1


def test_without_tensorboard_a_run_writes_and_says_nothing_more(tmp_path, monkeypatch, capfd):
    """The package missing (its import fails): no tensorboard folder, no output, the same log."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import` of it now raises ImportError
    train(tiny_config(tmp_path / "run", epochs=1), progress=False)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock", "checkpoint.pt", "config.json",
                                                                     "train_log.csv"]
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""


def test_only_rank_0_writes(tmp_path):
    """Under torchrun every rank builds the log; the others' record nothing."""
    row = {"epoch": 1, "loss": 1.0, "seconds": 2.0}
    for rank in (1, 0):
        run = SimpleNamespace(out=tmp_path, world=World(rank=rank, size=2), train_loader=range(4))
        live_log(run, first_epoch=1).record(row)
        assert (tmp_path / "tensorboard").exists() == (rank == 0)
    assert scalars(tmp_path) == {"train/loss": [(1, 1.0)], "cost/seconds": [(1, 2.0)], SECONDS_PER_STEP: [(1, 0.5)]}
