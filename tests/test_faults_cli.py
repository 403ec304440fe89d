"""Issue 25, items 3 and 6 from the user's side: resume refuses what it would ignore or what no longer matches its
checkpoint, and the command line's own errors are one line (exit 2, no traceback, nothing written)."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from loafing.config import TrainConfig

PLAN = "[1] [4] [7]"


@pytest.fixture
def interrupted(tmp_path, interrupted_training):
    """A resnet20-cifar CT run on 128 digits stopped in its second (of three) epochs: a checkpoint of epoch 1."""
    out = tmp_path / "run"
    config = TrainConfig(model="resnet20-cifar", dataset="digits", method="ct", epochs=3, lr=0.1, seed=0,
                         device="cpu", train_size=128, batch_size=32, monitor_calib_size=32, out=str(out))
    interrupted_training(config, epoch=2)
    return out


def files_of(folder):
    """Every file in `folder` with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_resume_refuses_options_it_would_ignore(interrupted, run_cli):
    before = files_of(interrupted)
    code, out, err = run_cli("train", "--resume", interrupted, "--epochs", 5, "--lr", 0.5, "--quiet")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == ["loafing: error: --resume continues the run as it was configured; --epochs, "
                                        "--lr would be ignored: drop them (or train a new run with --out)"]
    assert files_of(interrupted) == before


def test_resume_refuses_a_config_json_edited_after_its_checkpoint(interrupted, run_cli):
    config = json.loads((interrupted / "config.json").read_text())
    config["epochs"] = 4  # what a user might do to train on: the schedule in the checkpoint ends at 3
    (interrupted / "config.json").write_text(json.dumps(config))
    before = files_of(interrupted)
    code, _, err = run_cli("train", "--resume", interrupted, "--quiet")
    assert code == 2
    [line] = err.strip().splitlines()
    assert "config.json' does not match its checkpoint: epochs is 4 there, 3 in the checkpoint" in line
    assert files_of(interrupted) == before


def test_resume_of_another_models_checkpoint_is_one_line(interrupted, tmp_path, run_cli):
    other = tmp_path / "other"
    config = TrainConfig(model="resnet32-cifar", dataset="digits", method="ct", epochs=1, lr=0.1, seed=0,
                         device="cpu", train_size=64, batch_size=32, monitor_calib_size=32, out=str(other))
    from loafing.train import train
    train(config, progress=False)
    (interrupted / "checkpoint.pt").write_bytes((other / "checkpoint.pt").read_bytes())
    code, _, err = run_cli("train", "--resume", interrupted, "--quiet")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "does not match its checkpoint: model is 'resnet20-cifar' there, 'resnet32-cifar'" in err


def test_a_missing_required_option_is_one_line_with_its_choices(tmp_path, run_cli):
    code, _, err = run_cli("destruct", "--ckpt", tmp_path / "x.pt", "--out", tmp_path / "d.csv")
    assert code == 2
    assert err.strip().splitlines() == ["loafing: error: Missing option '--mode'. Choose from: delete-one, "
                                        "delete-many, permute"]
    code, _, err = run_cli("measure", "--out", tmp_path / "m.csv")
    assert code == 2 and err.strip().splitlines() == [
        "loafing: error: give --ckpt (a checkpoint) or --weights (a timm / torchvision --model's own weights), one of "
        "them"]
    assert not list(tmp_path.iterdir())


def test_a_plan_given_twice_is_measured_once_and_plan_with_space_is_refused(trained_runs, tmp_path, run_cli):
    ckpt = trained_runs["ct"] / "checkpoint.pt"
    out = tmp_path / "twice.csv"
    code, _, err = run_cli("measure", "--ckpt", ckpt, "--plan", PLAN, "--plan", "[1]  [4] [7]", "--calib-size", 32,
                           "--out", out, "--quiet", "--device", "cpu")
    assert code == 0, err
    assert pd.read_csv(out)["plan"].tolist() == ["[1] [4] [7]"]
    refused = tmp_path / "both.csv"
    code, _, err = run_cli("measure", "--ckpt", ckpt, "--plan", PLAN, "--space", "uniform", "--out", refused)
    assert code == 2 and not refused.exists()
    assert err.strip().splitlines() == ["loafing: error: --plan and --space both choose the plans to evaluate; "
                                        "give one of them"]
