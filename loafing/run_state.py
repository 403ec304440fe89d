"""A run folder's state on disk: its configuration, its checkpoint of the last finished epoch (weights, optimizer,
scheduler, every random stream) and its tables, written after each epoch and read back by --resume."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader

from loafing.checkpoint import load_weights, read_checkpoint, save_checkpoint
from loafing.config import TrainConfig, config_from_dict
from loafing.device_data import DeviceBatches
from loafing.distributed import gather_objects
from loafing.errors import LoafingError
from loafing.io import write_json
from loafing.schema import OLD_GRANULARITY, write_table
from loafing.training_run import Run

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "train_log.csv"
KL_NAME = "kl_trajectory.csv"
CONFIG_NAME = "config.json"


def load_config(run_dir: str | Path) -> TrainConfig:
    """The configuration a run folder was trained with."""
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise LoafingError(f"{str(run_dir)!r} holds no run to resume (no {CONFIG_NAME})")
    try:
        values = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LoafingError(f"{path}: not a readable configuration ({type(err).__name__})") from None
    if not isinstance(values, dict):
        raise LoafingError(f"{path}: not a readable configuration (a {type(values).__name__}, not an object)")
    return config_from_dict(values, str(path))


def check_resumable(run_dir: Path) -> None:
    """Refuse to resume a run whose config.json no longer says what its checkpoint was trained with (an edited
    config.json would continue, say, at another length or learning rate without a word)."""
    path = run_dir / CHECKPOINT_NAME
    saved = read_checkpoint(path, resume=True)["config"]
    trained = dataclasses.asdict(config_from_dict(saved, f"the configuration in {str(path)!r}"))
    written = dataclasses.asdict(load_config(run_dir))
    changed = [name for name in written if trained.get(name) != written[name]]
    if changed:
        name = changed[0]
        raise LoafingError(f"{str(run_dir / CONFIG_NAME)!r} does not match its checkpoint: {name} is "
                           f"{written[name]!r} there, {trained.get(name)!r} in the checkpoint; restore it, or train "
                           "a new run")


def rank_rng_state(run: Run) -> dict:
    """The random streams that differ per rank: torch's, CUDA's and the device-resident augmentation's."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(run.device) if run.device.type == "cuda" else None,
            "augment": run.train_loader.generator.get_state() if isinstance(run.train_loader, DeviceBatches) else None}


def save_state(run: Run, epoch: int, log_rows: list[dict], kl_rows: list[dict]) -> None:
    """Write the configuration and the checkpoint of a finished epoch, then the tables it describes (each
    atomically): a run killed at any moment leaves at most a checkpoint ahead of its tables, never behind.

    Every rank hands its random state to rank 0, which alone writes."""
    ranks = gather_objects(run.world, rank_rng_state(run))
    if not run.world.is_main:
        return
    loader = run.train_loader.generator if isinstance(run.train_loader, DataLoader) else None
    rng_state = {"python": run.rng.getstate(), "loader": loader.get_state() if loader is not None else None,
                 "ranks": ranks}
    method_state = run.step.modules.state_dict() if run.step.modules is not None else None
    first = not (run.out / CHECKPOINT_NAME).exists()
    write_json(dataclasses.asdict(run.config), run.out / CONFIG_NAME)
    # The checkpoint carries the rows too, so a resumed run never depends on which file was written last.
    try:
        save_checkpoint(run.out / CHECKPOINT_NAME, run.model, run.optimizer, run.scheduler, epoch,
                        dataclasses.asdict(run.config),
                        {"rng": rng_state, "log_rows": log_rows, "kl_rows": kl_rows, "method_state": method_state,
                         "scaler": run.scaler.state_dict()})
    except OSError:
        if first:  # no checkpoint of this run exists: its configuration alone would describe nothing
            (run.out / CONFIG_NAME).unlink(missing_ok=True)
        raise
    if kl_rows:
        write_table(pd.DataFrame(kl_rows), run.out / KL_NAME, "kl_trajectory")
    else:  # nothing recorded by this run yet: a KL table here is another run's
        (run.out / KL_NAME).unlink(missing_ok=True)
    write_table(pd.DataFrame(log_rows), run.out / LOG_NAME, "train_log")


def restore_state(run: Run) -> tuple[int, list[dict], list[dict]]:
    """Load the last checkpoint into `run` (every rank reads it, each takes back its own random state); returns
    the epoch to continue with and the rows so far."""
    path = run.out / CHECKPOINT_NAME
    state = read_checkpoint(path, resume=True)
    load_weights(run.model, state["model"], f"checkpoint {str(path)!r}")
    if run.step.modules is not None:
        load_weights(run.step.modules, state["method_state"] or {}, f"checkpoint {str(path)!r} (method modules)")
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    rng = state["rng"]
    mine = rng["ranks"][run.world.rank] if "ranks" in rng else rng  # checkpoints before torchrun: one process's
    torch.set_rng_state(mine["torch"])
    if run.device.type == "cuda" and mine.get("cuda") is not None:
        cuda = mine["cuda"]
        if isinstance(cuda, list):  # saved as every GPU's state by one process
            cuda = cuda[run.device.index or 0]
        torch.cuda.set_rng_state(cuda, run.device)
    if mine.get("augment") is not None and isinstance(run.train_loader, DeviceBatches):
        run.train_loader.generator.set_state(mine["augment"])
    run.rng.setstate(rng["python"])
    if rng.get("loader") is not None and isinstance(run.train_loader, DataLoader):
        run.train_loader.generator.set_state(rng["loader"])
    return state["epoch"] + 1, state["log_rows"], [{"granularity": OLD_GRANULARITY, **row} for row in state["kl_rows"]]
