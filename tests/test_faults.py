"""Bad input and faults, written as the user's command lines: one line on stderr, exit code 2, no traceback,
no output file, no input changed; kill -9 at any moment, then --resume, ends bit-identical."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from loafing.checkpoint import read_checkpoint
from loafing.io import atomic_path, run_folder_lock

RESNET20 = ["--model", "resnet20-cifar", "--epochs", "1", "--lr", "0.1", "--monitor-calib-size", "64", "--device",
            "cpu", "--quiet"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A ten-class ResNet-20's state dict with random weights (a foreign checkpoint: `--model resnet20-cifar`)."""
    from loafing.models import create_model

    path = tmp_path_factory.mktemp("weights") / "resnet20.pt"
    torch.save(create_model("resnet20-cifar", 10).net.state_dict(), path)
    return path


def one_line_error(code, stderr, message):
    lines = stderr.strip().splitlines()
    assert code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("loafing: error:"), stderr
    assert message in lines[0], stderr
    assert "Traceback" not in stderr


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# ---------------------------------------------------------------- no command writes over its inputs


@pytest.mark.parametrize("command", [["measure", "--plan", "[1] [4] [7]"], ["destruct", "--mode", "delete-one"]])
def test_the_output_cannot_be_an_input(run_cli, trained_runs, tmp_path, command):
    same = tmp_path / "same.pt"
    shutil.copy(trained_runs["ct"] / "checkpoint.pt", same)
    before = same.read_bytes()
    code, _, err = run_cli(command[0], "--ckpt", same, *command[1:], "--out", same, "--quiet")
    one_line_error(code, err, "is one of the inputs; it would be overwritten")
    assert same.read_bytes() == before
    code, _, err = run_cli(command[0], "--ckpt", same, *command[1:], "--out", tmp_path / "." / "same.pt", "--quiet")
    one_line_error(code, err, "is one of the inputs")


# ---------------------------------------------------------------- settings: types, ranges, finite numbers


@pytest.mark.parametrize("args, message", [
    (["--lr", "nan"], "--lr must be a finite number, got nan"),
    (["--lr", "inf"], "--lr must be a finite number, got inf"),
    (["--method", "st", "--lam", "nan"], "--lam must be a finite number, got nan"),
    (["--momentum", "-1"], "--momentum must be in [0, 1), got -1.0"),
    (["--weight-decay", "-1"], "--weight-decay must be at least 0, got -1.0"),
    (["--workers", "-1"], "--workers must be at least 0, got -1"),
    (["--epochs", "x"], "'x' is not a valid integer"),
])
def test_bad_training_settings(run_cli, tmp_path, args, message):
    code, _, err = run_cli("train", *RESNET20, *args, "--out", tmp_path / "run")
    one_line_error(code, err, message)
    assert not (tmp_path / "run").exists()


def test_a_diverging_run_stops_with_a_clear_message(run_cli, tmp_path):
    code, _, err = run_cli("train", "--model", "resnet20-cifar", "--epochs", "1", "--lr", "1e12",
                           "--monitor-calib-size", "64", "--device", "cpu", "--quiet", "--out", tmp_path / "run")
    one_line_error(code, err, "training diverged: the mean loss of epoch 1 is")
    assert "no checkpoint was written" in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists() and not (tmp_path / "run" / "config.json").exists()


# ---------------------------------------------------------------- output paths, checked before the work


def test_output_paths_are_checked_before_any_work(run_cli, trained_runs, tmp_path, monkeypatch):
    ckpt = trained_runs["ct"] / "checkpoint.pt"
    (tmp_path / "folder").mkdir()
    (tmp_path / "a-file").write_text("x")
    for out, message in ((tmp_path / "folder", "is a folder; name a file"), ("", "must name a file, got an empty"),
                         (tmp_path / "a-file" / "m.csv", "is a file, not a folder")):
        start = time.perf_counter()
        code, _, err = run_cli("measure", "--ckpt", ckpt, "--out", out, "--quiet")
        one_line_error(code, err, message)
        assert time.perf_counter() - start < 2  # before loading anything
    code, _, err = run_cli("train", *RESNET20, "--out", tmp_path / "a-file")
    one_line_error(code, err, "is a file; name a folder")
    code, _, err = run_cli("figures", "--results", "results/quick", "--out", tmp_path / "a-file")
    one_line_error(code, err, "is a file; name a folder")
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == readonly else real_access(path, mode))
    code, _, err = run_cli("measure", "--ckpt", ckpt, "--out", readonly / "m.csv", "--quiet")
    one_line_error(code, err, "is not writable")
    assert list(readonly.iterdir()) == []


def test_resume_of_a_broken_configuration(run_cli, trained_runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_runs["ct"], run)
    for text, message in (('{"epochs": 2,', "not a readable configuration"),
                          ('["not", "an", "object"]', "not a readable configuration (a list"),
                          ('{"epochs": "two"}', "setting 'epochs' is 'two', not int"),
                          ('{"bogus": 1}', "unknown setting 'bogus'"),
                          ('{"lr": -1.0, "out": "x"}', "--lr must be greater than 0, got -1.0")):
        (run / "config.json").write_text(text)
        before = files(run)
        code, _, err = run_cli("train", "--resume", run, "--quiet")
        one_line_error(code, err, message)
        assert files(run) == before


# ---------------------------------------------------------------- results CSVs that are not results


@pytest.mark.parametrize("content, message", [  # a file that is no results table: test_faults_results.py
    (b'run,model\n"a,b\n"c', "measure.csv"),
])
def test_figures_of_broken_results(run_cli, tmp_path, content, message):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "measure.csv").write_bytes(content)
    code, _, err = run_cli("figures", "--results", tmp_path / "results", "--out", tmp_path / "f", "--only", "fig4")
    one_line_error(code, err, message)
    assert not list((tmp_path / "f").glob("*.png"))


def test_figures_of_text_in_a_numeric_column(run_cli, tmp_path):
    (tmp_path / "results").mkdir()
    measure = pd.read_csv("results/quick/measure.csv", dtype=str, keep_default_na=False)
    measure.loc[3, "top1"] = "ninety"
    measure.to_csv(tmp_path / "results" / "measure.csv", index=False)
    code, _, err = run_cli("figures", "--results", tmp_path / "results", "--out", tmp_path / "f")
    one_line_error(code, err, "column 'top1' holds a value that is not a number")


# ---------------------------------------------------------------- image folders with something wrong in them


def image_folder(root: Path, corrupt: bool = False, empty_class: bool = False, no_classes: bool = False) -> Path:
    from PIL import Image
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            folder = root / split / name
            folder.mkdir(parents=True)
            if empty_class and split == "train" and name == "dog":
                continue
            for i in range(3):
                Image.new("RGB", (32, 32), (i * 40, 80, 120)).save(folder / f"{i}.jpg")
    if corrupt:
        (root / "test" / "dog" / "2.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    if no_classes:
        shutil.rmtree(root / "train")
        (root / "train").mkdir()
        Image.new("RGB", (32, 32)).save(root / "train" / "loose.jpg")
    return root


@pytest.mark.parametrize("problem, message", [
    ("empty_class", "Found no valid file for the classes dog"),
    ("no_classes", "Couldn't find any class folder"),
    ("corrupt", "cannot decode image"),
])
def test_image_folder_problems(run_cli, tmp_path, problem, message):
    root = image_folder(tmp_path / "data", **{problem: True})
    code, _, err = run_cli("train", *RESNET20, "--dataset", "imagefolder", "--data-dir", root, "--out", tmp_path / "r")
    one_line_error(code, err, message)
    if problem == "corrupt":
        assert "2.jpg" in err
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


# ---------------------------------------------------------------- one process per run folder


def test_a_run_folder_in_use_is_refused(run_cli, tmp_path):
    folder = tmp_path / "run"
    with run_folder_lock(folder):  # as another process holds it
        code, _, err = run_cli("train", *RESNET20, "--out", folder)
        assert sorted(p.name for p in folder.iterdir()) == [".lock"]  # the refused run wrote nothing, kept the lock
    one_line_error(code, err, f"run folder '{folder}' is in use by loafing process {os.getpid()}")


def test_a_run_that_fails_before_writing_leaves_no_folder(tmp_path):
    folder = tmp_path / "new" / "run"
    with pytest.raises(RuntimeError), run_folder_lock(folder):
        assert (folder / ".lock").exists()
        raise RuntimeError("the run failed while building its model")
    assert not folder.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    with run_folder_lock(kept):
        (kept / "config.json").write_text("{}")
    assert sorted(p.name for p in kept.iterdir()) == [".lock", "config.json"]  # a started run keeps its folder
    with run_folder_lock(kept / "empty"):
        (kept / "empty" / "note").write_text("")
        (kept / "empty" / "note").unlink()
    assert not (kept / "empty").exists()


def loafing(*args: str) -> list[str]:
    return [sys.executable, "-m", "loafing", *args]


def test_two_runs_started_together_into_one_folder(tmp_path):
    folder = tmp_path / "run"
    first = subprocess.Popen(loafing("train", *RESNET20, "--epochs", "2", "--seed", "0", "--out", str(folder)),
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (folder / ".lock").exists() or str(first.pid) not in (folder / ".lock").read_text():
        assert time.time() < deadline and first.poll() is None
        time.sleep(0.05)
    second = subprocess.run(loafing("train", *RESNET20, "--seed", "1", "--out", str(folder)), capture_output=True,
                            text=True)
    one_line_error(second.returncode, second.stderr, f"is in use by loafing process {first.pid}")
    assert first.wait(timeout=120) == 0, first.stderr.read()
    assert json.loads((folder / "config.json").read_text())["seed"] == 0
    assert read_checkpoint(folder / "checkpoint.pt")["config"]["seed"] == 0
    assert set(pd.read_csv(folder / "train_log.csv")["seed"]) == {0}


# ---------------------------------------------------------------- kill -9, temp files, the log never ahead


# After the first checkpoint: early, mid-epoch, whenever it lands (the default run kills mid-epoch only).
@pytest.mark.parametrize("delay", [0.3, pytest.param(0.0, marks=pytest.mark.slow),
                                   pytest.param(0.7, marks=pytest.mark.slow)])
def test_kill_9_at_any_moment_then_resume_is_bit_identical(delay, tmp_path):
    args = ["--model", "resnet20-cifar", "--method", "st", "--epochs", "3", "--train-size", "512", "--lr", "0.1",
            "--monitor-calib-size", "64", "--device", "cpu", "--quiet"]
    subprocess.run(loafing("train", *args, "--out", str(tmp_path / "full")), check=True)
    cut = tmp_path / "cut"
    victim = subprocess.Popen(loafing("train", *args, "--out", str(cut)))
    deadline = time.time() + 120
    while not (cut / "checkpoint.pt").exists() or read_checkpoint(cut / "checkpoint.pt")["epoch"] < 1:
        assert time.time() < deadline and victim.poll() is None
        time.sleep(0.02)
    time.sleep(delay)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    log, killed_at = pd.read_csv(cut / "train_log.csv"), read_checkpoint(cut / "checkpoint.pt")["epoch"]
    assert log["epoch"].max() <= killed_at  # the log is never ahead
    assert killed_at < 3 or delay > 0.5  # before its end (the last delay may land after it): something to resume
    subprocess.run(loafing("train", "--resume", str(cut), "--quiet"), check=True)
    full, resumed = read_checkpoint(tmp_path / "full" / "checkpoint.pt"), read_checkpoint(cut / "checkpoint.pt")
    assert resumed["epoch"] == 3
    assert all(torch.equal(full["model"][k], resumed["model"][k]) for k in full["model"])
    assert not list(cut.glob(".*.tmp"))


def test_a_temp_file_left_by_a_killed_writer_is_removed(tmp_path):
    stale = tmp_path / ".checkpoint.pt.999999999.x1y2.tmp"  # no process has that pid
    stale.write_bytes(b"half a checkpoint")
    mine = tmp_path / f".checkpoint.pt.{os.getpid()}.keep.tmp"  # a live writer's: left alone
    mine.write_bytes(b"being written")
    with atomic_path(tmp_path / "checkpoint.pt") as tmp:
        tmp.write_bytes(b"whole")
    assert not stale.exists() and mine.exists() and (tmp_path / "checkpoint.pt").read_bytes() == b"whole"


def test_a_crash_while_saving_leaves_no_log_row_without_its_checkpoint(tmp_path, monkeypatch):
    import loafing.train as train_module
    from loafing.config import TrainConfig

    import loafing.run_state

    real = loafing.run_state.save_checkpoint
    calls = {"n": 0}

    def crash_on_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        real(*args, **kwargs)

    monkeypatch.setattr(loafing.run_state, "save_checkpoint", crash_on_second)
    with pytest.raises(OSError):
        train_module.train(TrainConfig(model="resnet20-cifar", epochs=2, lr=0.1, monitor_calib_size=64, device="cpu",
                                       out=str(tmp_path / "run")), progress=False)
    assert read_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 1
    assert pd.read_csv(tmp_path / "run" / "train_log.csv")["epoch"].tolist() == [1]


def test_files_get_the_users_umask(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    with atomic_path(tmp_path / "x.csv") as tmp:
        tmp.write_text("a\n")
    assert (tmp_path / "x.csv").stat().st_mode & 0o777 == 0o666 & ~umask


# ---------------------------------------------------------------- checkpoints and summaries that mislead


def test_a_folder_given_as_checkpoint(run_cli, tmp_path):
    code, _, err = run_cli("measure", "--ckpt", tmp_path, "--out", tmp_path / "m.csv")
    one_line_error(code, err, "is a folder, not a checkpoint file")


def test_non_finite_weights_are_warned_about(run_cli, trained_runs, tmp_path):
    state = read_checkpoint(trained_runs["ct"] / "checkpoint.pt")
    state["model"]["net.layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    code, _, err = run_cli("measure", "--ckpt", tmp_path / "nan.pt", "--plan", "[1] [4] [7]", "--calib-size", 64,
                           "--out", tmp_path / "m.csv", "--quiet")
    assert code == 0
    assert err.strip().splitlines() == [
        f"loafing: warning: checkpoint '{tmp_path / 'nan.pt'}' holds non-finite values in 1 tensors "
        "(e.g. net.layer2.0.conv1.weight): every number measured from it is meaningless"]


def test_a_measure_without_the_main_plan_says_so(run_cli, trained_runs, tmp_path):
    code, out, _ = run_cli("measure", "--ckpt", trained_runs["ct"] / "checkpoint.pt", "--plan", "[1] [4] [7]",
                           "--calib-size", 64, "--out", tmp_path / "m.csv", "--quiet")
    assert code == 0 and "main network not measured" in out and "nan" not in out


# ---------------------------------------------------------------- issue 25: checkpoints that are not what they claim


@pytest.mark.parametrize("damage, message", [
    (lambda state: state.pop("normalization"), "it has no 'normalization'"),
    (lambda state: state.pop("config"), "it has no 'config'"),
    (lambda state: state["config"].update(num_classes=-3), "its config says -3 classes"),
    (lambda state: state["config"].update(width_mult=-1.0), "its config's width_mult is -1.0"),
    (lambda state: state.update(model=[1, 2]), "its 'model' is not a dict of tensors"),
])
def test_a_damaged_own_checkpoint_is_one_line_naming_it(run_cli, trained_runs, tmp_path, damage, message):
    state = read_checkpoint(trained_runs["ct"] / "checkpoint.pt")
    damage(state)
    torch.save(state, tmp_path / "damaged.pt")
    code, _, err = run_cli("measure", "--ckpt", tmp_path / "damaged.pt", "--plan", "[1] [4] [7]", "--calib-size", 64,
                           "--out", tmp_path / "m.csv", "--quiet")
    one_line_error(code, err, f"checkpoint '{tmp_path / 'damaged.pt'}' is damaged or not loafing's: {message}")
    assert not (tmp_path / "m.csv").exists()


def test_resume_of_a_checkpoint_without_its_random_state(run_cli, trained_runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_runs["ct"], run)
    state = read_checkpoint(run / "checkpoint.pt")
    state["epoch"] = 1  # an epoch left to train
    del state["rng"]
    torch.save(state, run / "checkpoint.pt")
    before = {k: v for k, v in files(run).items() if k != ".lock"}
    code, _, err = run_cli("train", "--resume", run, "--quiet")
    one_line_error(code, err, "is damaged or not loafing's: it has no 'rng'")
    assert {k: v for k, v in files(run).items() if k != ".lock"} == before


FULL_DISK = ("import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
             "resource.setrlimit(resource.RLIMIT_FSIZE, (2**18, 2**18)); sys.argv[0] = 'loafing'; "
             "runpy.run_module('loafing', run_name='__main__')")  # a write past 256 KiB fails, as on a full disk


def test_a_full_disk_while_checkpointing_is_one_line_and_leaves_nothing_half_written(tmp_path):
    done = subprocess.run([sys.executable, "-c", FULL_DISK, "train", *RESNET20, "--train-size", "64", "--out",
                           str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    one_line_error(done.returncode, done.stderr, "File too large")
    assert f"({tmp_path / 'run' / 'checkpoint.pt'})" in done.stderr
    assert not (tmp_path / "run" / "checkpoint.pt").exists() and not list((tmp_path / "run").glob(".*.tmp"))
    assert not (tmp_path / "run" / "config.json").exists()  # a configuration of no checkpoint is not left behind


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_fifo_or_a_device_given_as_checkpoint_is_called_what_it_is(run_cli, tmp_path, kind):
    ckpt = tmp_path / "c.pt"
    if kind == "fifo":
        os.mkfifo(ckpt)
    else:
        ckpt.symlink_to("/dev/zero")
    code, _, err = run_cli("measure", "--ckpt", ckpt, "--out", tmp_path / "m.csv", "--quiet")
    one_line_error(code, err, f"checkpoint '{ckpt}' is not a regular file")


def test_unsafe_load_says_once_that_the_files_code_may_run(run_cli, trained_runs, tmp_path):
    state = read_checkpoint(trained_runs["ct"] / "checkpoint.pt")
    torch.save({**state, "args": argparse.Namespace(arch="resnet20")}, tmp_path / "with-args.pt")
    common = ["--plan", "[1] [4] [7]", "--calib-size", 64, "--unsafe-load", "--quiet"]
    code, _, err = run_cli("measure", "--ckpt", tmp_path / "with-args.pt", *common, "--out", tmp_path / "a.csv")
    assert code == 0, err
    assert err.strip().splitlines() == [
        f"loafing: warning: --unsafe-load: '{tmp_path / 'with-args.pt'}' holds Python objects (argparse.Namespace) "
        "and is unpickled in full, so any code in it runs"]
    code, _, err = run_cli("measure", "--ckpt", trained_runs["ct"] / "checkpoint.pt", *common, "--out",
                           tmp_path / "b.csv")
    assert code == 0 and err.strip() == ""  # weights alone: nothing of the file's runs, nothing to say


# ---------------------------------------------------------------- issue 25: output names and sizes


def test_a_long_but_valid_output_name_is_written_and_a_too_long_one_refused_first(run_cli, weights, tmp_path):
    common = ["--ckpt", weights, "--model", "resnet20-cifar", "--plan", "[1,2,3] [4,5,6] [7,8,9]", "--no-recalibrate",
              "--device", "cpu", "--quiet"]
    long = tmp_path / ("m" * 240 + ".csv")  # 244 bytes: a valid name, whose temp name must still fit in 255
    code, _, err = run_cli("measure", *common, "--out", long)
    assert code == 0, err
    assert pd.read_csv(long)["top1"].notna().all() and [p.name for p in tmp_path.iterdir()] == [long.name]
    start = time.perf_counter()
    code, _, err = run_cli("measure", *common, "--out", tmp_path / ("m" * 252 + ".csv"))
    one_line_error(code, err, "a name in it is 256 bytes long; a file name has at most 255")
    assert time.perf_counter() - start < 2  # before loading anything


@pytest.mark.parametrize("command", ["train", "measure"])
@pytest.mark.parametrize("args, message", [
    (["--width-mult", "1e9"], "--width-mult must be in (0, 16], got 1000000000.0"),
    (["--image-size", "100000"], "--image-size must be in [1, 1024], got 100000"),
])
def test_absurd_sizes_are_refused_up_front(run_cli, weights, tmp_path, command, args, message):
    if command == "train":
        code, _, err = run_cli("train", *RESNET20, *args, "--out", tmp_path / "run")
    else:
        code, _, err = run_cli("measure", "--ckpt", weights, "--model", "resnet20-cifar", *args, "--out",
                               tmp_path / "m.csv", "--quiet")
    one_line_error(code, err, message)
    assert list(tmp_path.iterdir()) == []


def test_a_refused_train_leaves_no_run_folder(run_cli, tmp_path):
    code, _, err = run_cli("train", *RESNET20, "--method", "st", "--space-size", "0", "--out", tmp_path / "run")
    one_line_error(code, err, "--space-size")
    assert not (tmp_path / "run").exists()
