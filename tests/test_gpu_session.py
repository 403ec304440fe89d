"""benchmarks/gpu_session.py, on the CPU: its dry run names valid commands, and the budget cuts and skips steps."""
import importlib.util
import subprocess
import sys
from pathlib import Path

from loafing.studies import builtin_study

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_session.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_session", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_dry_run_lists_every_step_and_the_study_it_names_is_a_valid_one(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--data-dir", str(tmp_path / "data"), "--out",
                           str(tmp_path / "out"), "--dry-run"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    names = [line.split(":")[0] for line in done.stdout.splitlines()[:-1]]
    assert names == ["machine", "throughput", "sync_bn", "study"]
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
    study = builtin_study(load_script().STUDY)
    assert {run.name for run in study.runs} == {"ct-seed0", "st-seed0"}
    assert study.name.endswith(f"-{study.runs[0].config.epochs}ep")  # the name says its epochs

    argv = dict(load_script().steps(str(tmp_path / "data"), tmp_path / "out"))["study"]
    listed = subprocess.run([*argv, "--dry-run"], capture_output=True, text=True)
    assert listed.returncode == 0 and "resnet56-cifar" in listed.stdout and "lam=5.0" in listed.stdout


def test_a_step_over_the_budget_is_cut_short_and_the_steps_after_it_are_skipped(tmp_path):
    script = load_script()
    plan = [("quick", [sys.executable, "-c", "print('done')"]),
            ("slow", [sys.executable, "-c", "import time; time.sleep(30)"]),
            ("after", [sys.executable, "-c", "print('never')"])]
    table = script.run_steps(plan, tmp_path, budget_s=3)
    assert list(table["status"]) == ["ok", "cut short by the budget", "skipped: slow did not finish"]
    assert table["seconds"].iloc[1] < 10
    assert (tmp_path / "quick.txt").read_text().strip() == "done"
