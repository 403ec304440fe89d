"""`loafing reproduce` reuses only its own work: a run another study trained is never trained over, a run or a result
made from other data (or by hand) is not reused, and SIGTERM or SIGHUP stops the study's worker processes with it,
the same command then resuming it. Each from the user's side: the command, its exit code, stderr, the files left."""
from __future__ import annotations

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

from test_faults import files, one_line_error
from test_real_data import TARBALL, cifar_jpeg, real_folder  # noqa: F401 (a fixture: the CIFAR-10 JPEGs, unpacked)

needs_cifar = pytest.mark.skipif(not TARBALL.exists(), reason="needs ../shared/data/cifar10-jpg.tar.gz (the "
                                 "project's reference material, absent outside the project)")

ALONE = '[[runs]]\nname = "ct"\nplan = "[1] [4] [7]"\n'  # a sub-network trained alone: one plan to measure


def study(folder: Path, name: str, measure: bool = False, runs: str = '[[runs]]\nname = "ct"\n', **defaults) -> Path:
    """A tiny study file (ResNet-20, one short epoch, one figure that it skips) with these defaults."""
    settings = {"model": "resnet20-cifar", "epochs": 1, "train_size": 64, "batch_size": 32, "monitor_calib_size": 32,
                "kl_probe_size": 32, **defaults}
    lines = [f'name = "{name}"', 'description = "test"', 'figures = ["gap"]', "[defaults]",
             *(f"{key} = {value!r}".replace("'", '"') for key, value in settings.items()), runs,
             "[measure]" + ("" if measure else "\nruns = []"), "[evaluation]", "calib_size = 32"]
    path = folder / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def reproduce(run_cli, study_file: Path, out: Path, *extra):
    """`loafing reproduce` of a study file into `out` on the CPU, one run at a time: (exit code, stdout, stderr)."""
    return run_cli("reproduce", "--study", study_file, "--out", out, "--device", "cpu", "--jobs", "1", "--quiet",
                   *extra)


def test_a_run_of_another_study_is_never_trained_over(run_cli, tmp_path):
    out = tmp_path / "out"
    code, _, err = reproduce(run_cli, study(tmp_path, "study-a", lr=0.1), out)
    assert code == 0, err
    before, runs = files(out), files(out / "runs")

    code, _, err = reproduce(run_cli, study(tmp_path, "study-b", lr=0.2), out)
    one_line_error(code, err, "run 'ct' in ")
    assert "study 'study-a', not 'study-b'" in err and "lr 0.1 there, 0.2 here" in err
    assert files(out) == before

    # Another study's run of the same settings is reused, not trained (a study's finished run folders copied into
    # another's); the same study, edited, trains its edited run again.
    code, stdout, err = reproduce(run_cli, study(tmp_path, "study-b", lr=0.1), out)
    assert code == 0 and "ct: reused" in stdout, err
    assert files(out / "runs") == runs
    code, stdout, err = reproduce(run_cli, study(tmp_path, "study-a", lr=0.3), out)
    assert code == 0 and "ct: trained" in stdout, err
    assert pd.read_csv(out / "runs" / "ct" / "train_log.csv")["lr"].tolist() == [0.3]


@needs_cifar
def test_a_run_is_not_reused_on_other_data(run_cli, cifar_jpeg, tmp_path):  # noqa: F811
    data = real_folder(cifar_jpeg, tmp_path / "cifar", {"train": 4, "test": 2})
    path, out = study(tmp_path, "jpegs", measure=True, runs=ALONE, dataset="imagefolder", train_size=40, batch_size=8,
                      monitor_calib_size=16, kl_probe_size=16), tmp_path / "out"
    code, _, err = reproduce(run_cli, path, out, "--data-dir", data)
    assert code == 0, err
    runs = files(out / "runs")

    moved = tmp_path / "moved"
    shutil.copytree(data, moved, symlinks=True)  # the same images elsewhere: the same data
    code, stdout, err = reproduce(run_cli, path, out, "--data-dir", moved)
    assert code == 0 and "ct: reused" in stdout, err
    assert files(out / "runs") == runs

    shutil.rmtree(moved / "train" / "truck")
    shutil.rmtree(moved / "test" / "truck")
    code, _, err = reproduce(run_cli, path, out, "--data-dir", moved)
    one_line_error(code, err, f"run 'ct' in {str(out / 'runs' / 'ct')!r} was trained on other data than "
                              f"{str(moved)!r} (10 classes there, 9 here)")
    assert files(out / "runs") == runs

    fewer = tmp_path / "fewer"
    shutil.copytree(data, fewer, symlinks=True)
    min((fewer / "train" / "cat").iterdir()).unlink()
    code, _, err = reproduce(run_cli, path, out, "--data-dir", fewer)
    one_line_error(code, err, "(4 train images of class 'cat' there, 3 here)")

    # A run from before runs recorded their data: its class count still decides.
    (out / "runs" / "ct" / "study.json").unlink()
    code, _, err = reproduce(run_cli, path, out, "--data-dir", moved)
    one_line_error(code, err, "(10 classes there, 9 here)")


def test_a_result_not_made_from_the_runs_checkpoint_is_recomputed(run_cli, tmp_path):
    path, out = study(tmp_path, "hand", measure=True, runs=ALONE), tmp_path / "out"
    code, _, err = reproduce(run_cli, path, out)
    assert code == 0, err
    measured = out / "runs" / "ct" / "measure.csv"
    real = pd.read_csv(measured)
    pd.read_csv(measured).assign(top1=99.9).to_csv(measured, index=False)  # by hand, newer than the checkpoint

    code, stdout, err = reproduce(run_cli, path, out)
    assert code == 0, err
    pd.testing.assert_frame_equal(pd.read_csv(out / "results" / "measure.csv")[real.columns], real)
    pd.testing.assert_frame_equal(pd.read_csv(measured), real)

    # A run folder and CSV from before results recorded what they were made from: the CSV's age decides, as it
    # did then (committed studies keep their hours of results).
    pd.read_csv(measured).assign(top1=99.9).to_csv(measured, index=False)
    for record in ("study.json", "measure.csv.json"):
        (out / "runs" / "ct" / record).unlink()
    code, _, err = reproduce(run_cli, path, out)
    assert code == 0, err
    assert set(pd.read_csv(out / "results" / "measure.csv")["top1"]) == {99.9}


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, ended but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def session_processes(session: int) -> list[int]:
    """The running processes of a session (the command started with start_new_session and all it started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[3]) == session and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def worker_pids(runs: Path, names: list[str], proc: subprocess.Popen, checkpoint: bool = False,
                patience_s: float = 300) -> list[int]:
    """The pids of the processes training these runs, from their folders' locks, once each has started (and, with
    `checkpoint`, written its first checkpoint)."""
    deadline = time.monotonic() + patience_s
    while time.monotonic() < deadline and proc.poll() is None:
        locks = [runs / name / ".lock" for name in names]
        texts = [lock.read_text() if lock.exists() else "" for lock in locks]
        started = all((runs / name / "checkpoint.pt").exists() for name in names) or not checkpoint
        if started and all(text.startswith("loafing process ") for text in texts):
            return [int(text.split()[-1]) for text in texts]
        time.sleep(0.1)
    raise AssertionError(f"the runs did not start (exit code {proc.poll()})")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)")
@pytest.mark.parametrize("signum, epochs", [(signal.SIGTERM, 1),
                                            pytest.param(signal.SIGHUP, 3, marks=pytest.mark.slow)],
                         ids=["SIGTERM", "SIGHUP-resumed"])
def test_a_stop_signal_ends_every_worker_and_the_same_command_resumes(tmp_path, signum, epochs):
    """SIGTERM as the two runs start; in the slow variant, SIGHUP after each has a checkpoint, and the same command
    continues from there."""
    both = '[[runs]]\nname = "{method}"\nmethod = ["ct", "st"]\n'
    path, out = study(tmp_path, "stopped", epochs=epochs, runs=both), tmp_path / "out"
    command = [sys.executable, "-m", "loafing", "reproduce", "--study", str(path), "--out", str(out), "--device", "cpu",
               "--jobs", "2", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "stderr", "w") as stderr:  # a pipe would wait for every process holding it
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=env, start_new_session=True)
    try:
        workers = worker_pids(out / "runs", ["ct", "st"], proc, checkpoint=epochs > 1)
        os.kill(proc.pid, signum)  # the parent only, as a scheduler or `timeout` sends it
        code = proc.wait(timeout=120)
        assert not [pid for pid in workers if alive(pid)]
        deadline = time.monotonic() + 30  # the resource tracker ends once no process holds its pipe
        while session_processes(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not session_processes(proc.pid)
    finally:
        if session_processes(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    err = (tmp_path / "stderr").read_text()
    assert code == 128 + signum and err.strip().splitlines() == [
        f"loafing: stopped by {signal.Signals(signum).name}; the same command resumes the study"], err
    assert not list(out.rglob("*.tmp"))

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for name in ("ct", "st"):
        assert torch.load(out / "runs" / name / "checkpoint.pt", weights_only=True)["epoch"] == epochs
        assert pd.read_csv(out / "runs" / name / "train_log.csv")["epoch"].tolist() == list(range(1, epochs + 1))


def test_a_study_comparing_networks_inside_others_in_the_unit_view_is_refused_before_training(run_cli, tmp_path):
    path = tmp_path / "units.toml"
    path.write_text('name = "units"\n\n[defaults]\nmodel = "timm:vit_tiny_patch16_224"\nmodel_args = { img_size = 32, '
                    'patch_size = 8, depth = 2, embed_dim = 16, num_heads = 2 }\nepochs = 1\n\n'
                    '[[runs]]\nname = "small"\n\n[[runs]]\nname = "big"\nmodel_args = { img_size = 32, patch_size = 8, '
                    'depth = 3, embed_dim = 16, num_heads = 2 }\n\n[measure]\nruns = []\n\n'
                    '[inside]\nruns = ["small", "big"]\n\n[evaluation]\ngranularity = "unit"\n')
    code, out, err = run_cli("reproduce", "--study", path, "--out", tmp_path / "out", "--quiet")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "inside-vs-alone compares networks block by block" in err
    assert not (tmp_path / "out" / "runs").exists()  # nothing trained
