import dataclasses
import importlib.util
from pathlib import Path

import pandas as pd
import torch

from loafing.studies import grid, is_complete, measure_runs, train_once
from loafing.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def load_study(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "analyses" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lambda_ablation_sweeps_lambda_and_seeds(tmp_path):
    study = load_study("lambda_ablation")
    configs = study.configs(str(tmp_path), lams=[0.5, 2.0], seeds=[0, 1], model="resnet20-cifar", epochs=1,
                            device="cpu", lr=0.1)
    assert [(c.method, c.lam, c.seed) for c in configs] == [
        ("ct", 1.0, 0), ("ct", 1.0, 1), ("st", 0.5, 0), ("st", 0.5, 1), ("st", 2.0, 0), ("st", 2.0, 1)]
    assert len({c.out for c in configs}) == 6
    chosen = [configs[0], configs[5]]
    dirs = [train_once(c, progress=False) for c in chosen]
    assert all(is_complete(c) for c in chosen)
    stamp = (dirs[1] / "checkpoint.pt").stat().st_mtime_ns
    train_once(chosen[1], progress=False)  # same config: reused, not retrained
    assert (dirs[1] / "checkpoint.pt").stat().st_mtime_ns == stamp
    table = measure_runs(dirs, space="uniform", calib_size=128)
    assert sorted(set(zip(table["method"], table["lam"], table["seed"]))) == [("ct", 1.0, 0), ("st", 2.0, 1)]
    assert len(table) == 2 * 3


def test_changed_config_is_not_complete(tmp_path):
    config = grid(TrainConfig(model="resnet20-cifar", epochs=1, device="cpu", lr=0.1), tmp_path, seed=[3])[0]
    assert config.out.endswith("ct-seed3")
    train_once(config, progress=False)
    assert is_complete(config)
    assert not is_complete(grid(TrainConfig(model="resnet20-cifar", epochs=2, device="cpu", lr=0.1), tmp_path,
                                seed=[3])[0])
    state = torch.load(Path(config.out) / "checkpoint.pt", weights_only=False)
    assert state["epoch"] == 1


def test_train_once_replaces_a_run_of_another_config_and_ignores_the_device(tmp_path):
    config = TrainConfig(model="resnet20-cifar", epochs=1, device="cpu", lr=0.1, out=str(tmp_path / "run"))
    train_once(config, progress=False)
    stamp = (tmp_path / "run" / "checkpoint.pt").stat().st_mtime_ns
    assert is_complete(dataclasses.replace(config, device="auto"))  # where it runs does not identify a run
    changed = dataclasses.replace(config, lr=0.2)
    train_once(changed, progress=False)  # another recipe in the same folder: trained afresh, not resumed
    assert (tmp_path / "run" / "checkpoint.pt").stat().st_mtime_ns != stamp
    assert pd.read_csv(tmp_path / "run" / "train_log.csv")["lr"].tolist() == [0.2]
    assert is_complete(changed) and not is_complete(config)
