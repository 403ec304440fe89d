"""Bad input, round 3, from the user's side: a foreign checkpoint in a run folder, options typed on the command line
that nothing reads, tensors of another kind in a state dict, a foreign checkpoint on the default data, a failed
build's folder, named weights without a network, an oversized destruct and influence on a DenseNet: each one line
on stderr, exit 2, nothing written (or the run as it was)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from loafing.config import TrainConfig
from loafing.models import create_model
from loafing.train import train
from test_faults import one_line_error
from test_weights import RESNET20, needs_shared

TINY = dict(model="resnet20-cifar", dataset="digits", method="ct", epochs=1, lr=0.1, seed=0, device="cpu",
            train_size=64, batch_size=32, monitor_calib_size=32)
TINY_STUDY = """name = "tiny"
description = "one tiny run"
train_images = 64
figures = []

[defaults]
model = "resnet20-cifar"
dataset = "digits"
epochs = 1
lr = 0.1
train_size = 64
batch_size = 32
monitor_calib_size = 32
{extra}
[[runs]]
name = "ct"

[measure]
runs = []
"""


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file in `folder` (but the lock) with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != ".lock"}


def state_dict_file(path: Path, model: str = "resnet20-cifar", **kwargs) -> Path:
    """A random ten-class network's state dict, saved as a foreign checkpoint."""
    torch.save(create_model(model, 10, **kwargs).net.state_dict(), path)
    return path


# ---------------------------------------------------------------- a foreign checkpoint in a run folder


@needs_shared
def test_resume_of_a_run_folder_holding_a_foreign_checkpoint_is_one_line(tmp_path, run_cli):
    run = tmp_path / "run"
    train(TrainConfig(**TINY, out=str(run)), progress=False)
    shutil.copy(RESNET20, run / "checkpoint.pt")  # akamaster's file over the run's own, config.json kept
    before = files_of(run)
    code, out, err = run_cli("train", "--resume", run, "--quiet")
    one_line_error(code, err, f"checkpoint '{run / 'checkpoint.pt'}' is a foreign checkpoint (akamaster's format")
    assert "not a run to resume" in err and out == ""
    assert files_of(run) == before


@needs_shared
def test_a_study_reusing_a_run_folder_holding_a_foreign_checkpoint_is_one_line(tmp_path, run_cli):
    study = tmp_path / "tiny.toml"
    study.write_text(TINY_STUDY.format(extra=""))
    run = tmp_path / "out" / "runs" / "ct"
    train(TrainConfig(**TINY, out=str(run)), progress=False)  # the study's run, as the study trains it
    shutil.copy(RESNET20, run / "checkpoint.pt")
    before = files_of(run)
    code, _, err = run_cli("reproduce", "--study", study, "--out", tmp_path / "out", "--device", "cpu", "--jobs", 1,
                           "--quiet")
    one_line_error(code, err, f"checkpoint '{run / 'checkpoint.pt'}' is a foreign checkpoint (akamaster's format")
    assert "not the checkpoint of a run `loafing train` wrote" in err
    assert files_of(run) == before


# ---------------------------------------------------------------- options typed that nothing would read


@pytest.mark.parametrize("args, message", [
    (["--kl-plans", "3"], "--kl-plans would be ignored: KL is recorded only with --kl-every N (above 0); drop it"),
    (["--kl-probe-size", "100"], "--kl-probe-size would be ignored: KL is recorded only with --kl-every N"),
    (["--optimizer", "adamw", "--momentum", "0.8"], "--momentum would be ignored: --optimizer adamw has no momentum"),
    (["--lam", "1.0"], "--lam needs --method st or st++"),  # at its default, but typed: ST's, not CT's
    (["--data-dir", "cifar10-jpg"], "--data-dir would be ignored: --dataset digits reads no folder"),
    (["--download"], "--download would be ignored: --dataset digits downloads nothing"),
    (["--method", "st", "--space-seed", "3"], "--space-seed would be ignored: it seeds --space-size's choice"),
    (["--method", "st++", "--amplitude", "1"], "--amplitude would be ignored: raw logits are not scaled"),
])
def test_train_refuses_typed_options_the_settings_leave_unread(run_cli, tmp_path, args, message):
    code, _, err = run_cli("train", "--model", "resnet20-cifar", "--epochs", 1, *args, "--device", "cpu", "--out",
                           tmp_path / "run", "--quiet")
    one_line_error(code, err, message)
    assert list(tmp_path.iterdir()) == []


def test_a_studys_defaults_may_hold_options_some_runs_leave_unread(run_cli, tmp_path):
    study = tmp_path / "tiny.toml"  # defaults serve runs of several methods and optimizers
    study.write_text(TINY_STUDY.format(extra='optimizer = "adamw"\nmomentum = 0.8\nkl_plans = 3\n')
                     .replace('name = "ct"', 'name = "{method}"\nmethod = ["ct", "st"]'))
    code, out, err = run_cli("reproduce", "--study", study, "--dry-run")
    assert code == 0, err
    assert "ct" in out and "st" in out


def test_evaluations_refuse_typed_options_they_leave_unread(run_cli, tmp_path):
    train(TrainConfig(**TINY, out=str(tmp_path / "run")), progress=False)
    ckpt = tmp_path / "run" / "checkpoint.pt"
    for args, message in ((["--no-recalibrate", "--calib-size", "10"], "--calib-size would be ignored: "
                           "--no-recalibrate calibrates nothing; drop it"),
                          (["--width-mult", "0.5"], f"checkpoint '{ckpt}' records its width multiplier (1); drop "
                           "--width-mult"),
                          (["--data-dir", tmp_path / "cifar10"], "--data-dir would be ignored: --dataset digits reads "
                           "no folder")):
        code, _, err = run_cli("measure", "--ckpt", ckpt, *args, "--out", tmp_path / "m.csv", "--quiet")
        one_line_error(code, err, message)
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


# ---------------------------------------------------------------- tensors of another kind, the default data set


def test_integer_tensors_are_refused_and_half_precision_is_converted_with_one_warning(run_cli, tmp_path):
    state = create_model("resnet20-cifar", 10).net.state_dict()
    torch.save({k: v.to(torch.int64) if v.is_floating_point() else v for k, v in state.items()}, tmp_path / "int.pt")
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, tmp_path / "half.pt")
    common = ["--model", "resnet20-cifar", "--plan", "[1,2,3] [4,5,6] [7,8,9]", "--no-recalibrate", "--quiet"]
    code, _, err = run_cli("measure", "--ckpt", tmp_path / "int.pt", *common, "--out", tmp_path / "i.csv")
    one_line_error(code, err, "does not fit the model: ")
    assert "tensors of another kind (e.g. conv1.weight is int64 where the model holds float32)" in err
    assert not (tmp_path / "i.csv").exists()
    code, _, err = run_cli("measure", "--ckpt", tmp_path / "half.pt", *common, "--out", tmp_path / "h.csv")
    assert code == 0, err
    [line] = err.strip().splitlines()
    assert line.startswith(f"loafing: warning: checkpoint '{tmp_path / 'half.pt'}' holds float16 tensors (")
    assert line.endswith("they are converted to the model's float32")
    assert len(pd.read_csv(tmp_path / "h.csv")) == 1


@needs_shared
def test_a_foreign_cifar_checkpoint_is_not_measured_on_the_default_data(run_cli, tmp_path):
    common = ["--ckpt", RESNET20, "--model", "resnet20-cifar", "--plan", "[1] [4] [7]", "--calib-size", 32, "--quiet"]
    code, _, err = run_cli("measure", *common, "--out", tmp_path / "m.csv")
    one_line_error(code, err, "resnet20-12fca82f is in akamaster's format, whose networks are CIFAR-10's: name its "
                   "data set with --dataset")
    assert not (tmp_path / "m.csv").exists()
    code, _, err = run_cli("measure", *common, "--dataset", "digits", "--out", tmp_path / "m.csv")  # said: measured
    assert code == 0, err
    imagenet_style = state_dict_file(tmp_path / "mbv3.pth", "mobilenet_v3_large", width_mult=0.5)
    code, _, err = run_cli("measure", "--ckpt", imagenet_style, "--model", "mobilenet_v3_large", "--width-mult", 0.5,
                           "--out", tmp_path / "n.csv", "--quiet")
    one_line_error(code, err, "mobilenet_v3_large takes 224x224 images, digits 32x32: name its data set with --dataset")
    assert not (tmp_path / "n.csv").exists()


# ---------------------------------------------------------------- item 13: a failed build, offline weights, sizes


def test_a_train_failing_after_its_checks_leaves_no_folder_holding_only_its_lock(run_cli, tmp_path):
    (tmp_path / "empty").mkdir()  # no CIFAR-10 in it: found only when the run, its folder locked, loads its data
    code, _, err = run_cli("train", "--model", "resnet20-cifar", "--dataset", "cifar10", "--data-dir",
                           tmp_path / "empty", "--epochs", 1, "--device", "cpu", "--out", tmp_path / "new" / "run")
    one_line_error(code, err, "cifar10 not found in")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_named_weights_without_a_network_fail_at_once_saying_where_they_go(tmp_path):
    nowhere = "http://127.0.0.1:9"  # what a machine without a network gets, a proxy or not
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch"),
           "HF_ENDPOINT": nowhere, "https_proxy": nowhere, "HTTPS_PROXY": nowhere, "no_proxy": "", "NO_PROXY": ""}
    command = ["measure", "--model", "timm:resnet18", "--weights", "pretrained", "--out", str(tmp_path / "m.csv")]
    # The library's own downloader retried for about a minute before failing; the limit is the test's timeout.
    done = subprocess.run([sys.executable, "-m", "loafing", *command], capture_output=True, text=True, env=env,
                          timeout=40)
    one_line_error(done.returncode, done.stderr, "timm:resnet18's weights resnet18.a1_in1k are not in the local cache "
                   "and ")
    assert f"copy the Hugging Face hub's cache folder '{tmp_path / 'hf' / 'hub' / 'models--timm--resnet18.a1_in1k'}'" \
        in done.stderr
    assert not (tmp_path / "m.csv").exists()


def test_destruct_says_how_many_networks_and_refuses_too_many_without_yes(run_cli, tmp_path):
    ckpt = state_dict_file(tmp_path / "r56.pt", "resnet56-cifar")
    code, out, err = run_cli("destruct", "--ckpt", ckpt, "--model", "resnet56-cifar", "--mode", "delete-many",
                             "--max-combos", 100_000_000, "--calib-size", 32, "--out", tmp_path / "d.csv", "--quiet")
    one_line_error(code, err, "33,554,431 destroyed networks are more than 10,000: lower --max-combos, or pass --yes")
    assert out.startswith("delete-many: 33,554,431 destroyed networks and the intact one, each on 450 test images "
                          "after recalibrating BN on 32: at most ")
    assert not (tmp_path / "d.csv").exists()


def test_influence_on_a_network_whose_blocks_all_change_shape_is_refused(run_cli, tmp_path):
    ckpt = state_dict_file(tmp_path / "dense.pt", "densenet121-cifar", width_mult=0.25)
    code, _, err = run_cli("influence", "--ckpt", ckpt, "--model", "densenet121-cifar", "--width-mult", 0.25,
                           "--calib-size", 32, "--out", tmp_path / "i.csv", "--quiet")
    one_line_error(code, err, "no block of densenet121-cifar keeps its input's shape")
    assert not (tmp_path / "i.csv").exists()
