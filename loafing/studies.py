"""Building blocks of study definitions: grids of training runs, run-once training, collected tables."""
from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import torch

from loafing.checkpoint import load_model
from loafing.data import load_dataset
from loafing.measure import measure_plans
from loafing.plans import get_space
from loafing.train import CHECKPOINT_NAME, TrainConfig, load_config, train


def grid(base: TrainConfig, root: str | Path, **axes: Iterable[Any]) -> list[TrainConfig]:
    """One config per combination of the axes' values (e.g. lam=[1, 5], seed=[0, 1]), each in its own folder."""
    names = list(axes)
    configs = []
    for values in itertools.product(*(list(axes[n]) for n in names)):
        changes = dict(zip(names, values))
        folder = "-".join(f"{n}{v}" for n, v in changes.items()) or "run"
        configs.append(dataclasses.replace(base, out=str(Path(root) / f"{base.method}-{folder}"), **changes))
    return configs


# Where a run executes and where its data lives do not change what it is.
NOT_IDENTIFYING = ("run", "num_classes", "device", "workers", "data_dir", "download")


def has_config(run_dir: str | Path, config: TrainConfig) -> bool:
    """Whether `run_dir` holds a run (finished or not) of this configuration."""
    if not (Path(run_dir) / CHECKPOINT_NAME).exists():
        return False
    saved, wanted = dataclasses.asdict(load_config(run_dir)), dataclasses.asdict(config)
    return all(saved[k] == wanted[k] for k in wanted if k not in NOT_IDENTIFYING)


def is_complete(config: TrainConfig) -> bool:
    """Whether `config.out` holds a finished run of exactly this configuration."""
    out = Path(config.out)
    if not has_config(out, config):
        return False
    return torch.load(out / CHECKPOINT_NAME, map_location="cpu", weights_only=False)["epoch"] == config.epochs


def train_once(config: TrainConfig, progress: bool = True) -> Path:
    """Train unless the same run is already complete; resume it if it was interrupted; replace another run."""
    out = Path(config.out)
    if is_complete(config):
        return out
    started = has_config(out, config)
    train(config, progress=progress, resume=started, overwrite=not started)
    return out


def measure_runs(run_dirs: Iterable[str | Path], space: str = "ordered", calib_size: int = 2000, seed: int = 0,
                 device: str = "cpu", progress: bool = False) -> pd.DataFrame:
    """Measure every run's plans of `space` into one tidy table (each row carries its run's lam and seed)."""
    tables = []
    for run_dir in run_dirs:
        loaded = load_model(Path(run_dir) / CHECKPOINT_NAME)
        data = load_dataset(loaded.config["dataset"], loaded.config.get("data_dir"))
        plans = get_space(space, loaded.model.layout)
        tables.append(measure_plans(loaded, plans, data, calib_size=calib_size, recalibrate=True, seed=seed,
                                    batch_size=256, device=torch.device(device), progress=progress))
    return pd.concat(tables, ignore_index=True)
