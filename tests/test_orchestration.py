import dataclasses
from pathlib import Path

import pandas as pd
import pytest
import torch

from loafing.config import TrainConfig, flat_settings
from loafing.errors import LoafingError
from loafing.eval_config import EvalConfig
from loafing.reproduce import Preset, RunSpec, is_complete, reproduce, train_once
from loafing.studies import load_study

ROOT = Path(__file__).resolve().parents[1]


def my_ablation(tmp_path: Path, lams: str = "[0.5, 2.0]") -> Path:
    """The shipped λ-ablation study copied and edited as a user would: their base, seeds and λ values."""
    text = (ROOT / "analyses" / "lambda-ablation.toml").read_text()
    for old, new in (('model = "mobilenet_v3_large"', 'model = "resnet20-cifar"\nmonitor_calib_size = 64'),
                     ("epochs = 30", "epochs = 1"), ("lr = 0.05", "lr = 0.1"), ("seed = [0]", "seed = [0, 1]"),
                     ("lam = [0.5, 1, 2, 5]", f"lam = {lams}")):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path = tmp_path / "my-ablation.toml"
    path.write_text(text)
    return path


def lam(run: RunSpec) -> float:
    """A run's λ; CT has none since methods own their options (the old TrainConfig gave it the default, 1.0)."""
    return flat_settings(run.config).get("lam", 1.0)


@pytest.mark.slow  # 30 s: a whole study trained; test_reproduce keeps a quicker end-to-end study in the default run
def test_lambda_ablation_sweeps_lambda_and_seeds(tmp_path):
    study = load_study(my_ablation(tmp_path))
    assert [(r.config.method, lam(r), r.config.seed) for r in study.runs] == [
        ("ct", 1.0, 0), ("ct", 1.0, 1), ("st", 0.5, 0), ("st", 0.5, 1), ("st", 2.0, 0), ("st", 2.0, 1)]
    assert len({r.name for r in study.runs}) == 6
    chosen = dataclasses.replace(study, runs=(study.runs[0], study.runs[5]), evaluation=EvalConfig(calib_size=128))
    reproduce(chosen, tmp_path, device="cpu", jobs=1, progress=False)
    runs = tmp_path / "runs"
    assert all(is_complete(dataclasses.replace(r.config, out=str(runs / r.name))) for r in chosen.runs)
    stamp = (runs / chosen.runs[1].name / "checkpoint.pt").stat().st_mtime_ns
    summary, _ = reproduce(chosen, tmp_path, device="cpu", jobs=1, progress=False)  # same runs: reused
    assert not summary["trained"].any()
    assert (runs / chosen.runs[1].name / "checkpoint.pt").stat().st_mtime_ns == stamp
    table = pd.read_csv(tmp_path / "results" / "measure.csv")
    lams = table["lam"].fillna(1.0)  # CT rows carry no λ (empty) since methods own their run columns
    assert sorted(set(zip(table["method"], lams, table["seed"]))) == [("ct", 1.0, 0), ("st", 2.0, 1)]
    assert len(table) == 2 * 27
    assert set(table["calib_size"]) == {128}


def test_lambda_ablation_study_dry_run(run_cli, tmp_path):
    code, out, _ = run_cli("reproduce", "--study", my_ablation(tmp_path), "--dry-run")
    assert code == 0
    assert all(name in out for name in ("ct-seed0", "ct-seed1", "st-lam0.5-seed0", "st-lam2-seed1"))
    # one epoch of the 1,347 digits per run: CT per seed, ST (1.4x CT, the registry's cost) per seed and λ
    cost = 1 * 1347 * (2 + 1.4 * 2 * 2)
    assert f"rough cost: {cost:.3g} image passes" in out
    code, _, err = run_cli("reproduce", "--study", my_ablation(tmp_path, '[0.5, "x"]'), "--dry-run")
    assert code == 2 and "my-ablation.toml: runs[1].lam[1]: must be a number, got 'x'" in err
    assert len(err.strip().splitlines()) == 1


def test_changed_config_is_not_complete(tmp_path):
    config = TrainConfig(model="resnet20-cifar", epochs=1, device="cpu", lr=0.1, seed=3, monitor_calib_size=64,
                         out=str(tmp_path / "ct"))
    train_once(config, progress=False)
    assert is_complete(config)
    assert not is_complete(dataclasses.replace(config, epochs=2))
    state = torch.load(Path(config.out) / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1


def test_train_once_replaces_a_run_of_another_config_and_ignores_the_device(tmp_path):
    config = TrainConfig(model="resnet20-cifar", epochs=1, device="cpu", lr=0.1, monitor_calib_size=64,
                         out=str(tmp_path / "run"))
    train_once(config, progress=False)
    stamp = (tmp_path / "run" / "checkpoint.pt").stat().st_mtime_ns
    assert is_complete(dataclasses.replace(config, device="auto"))  # where it runs does not identify a run
    changed = dataclasses.replace(config, lr=0.2)
    train_once(changed, progress=False)  # another recipe in the same folder: trained afresh, not resumed
    assert (tmp_path / "run" / "checkpoint.pt").stat().st_mtime_ns != stamp
    assert pd.read_csv(tmp_path / "run" / "train_log.csv")["lr"].tolist() == [0.2]
    assert is_complete(changed) and not is_complete(config)


def test_a_preset_with_bad_settings_fails_before_any_run(tmp_path):
    runs = (RunSpec("ok", TrainConfig(model="resnet20-cifar", epochs=1)),
            RunSpec("bad", TrainConfig(model="resnet20-cifar", epochs=1, lr=-1.0)))
    with pytest.raises(LoafingError, match="--lr must be greater than 0, got -1.0"):
        reproduce(Preset("bad", "test", runs, evaluation=EvalConfig(calib_size=64)), tmp_path, device="cpu", jobs=1,
                  progress=False)
    assert not (tmp_path / "runs").exists()
