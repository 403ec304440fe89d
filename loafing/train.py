"""Training a run of any registered method, epoch by epoch: checkpointed, logged and resumable."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pandas as pd
import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from loafing.bn import set_bn_momentum
from loafing.checkpoint import read_checkpoint, save_checkpoint
from loafing.config import TrainConfig, config_from_dict, validate_config
from loafing.data import DataSplits, load_dataset, make_loader, seeded_subset
from loafing.errors import LoafingError
from loafing.evaluate import classification_metrics, predict, resolve_device
from loafing.io import check_output_folder, run_folder_lock, write_json
from loafing.methods import TrainingStep, check_method_options, get_method, trained_plan
from loafing.models import StagedModel, create_model, get_spec
from loafing.plan_tree import evaluate_plans
from loafing.plans import Plan, ordered_space
from loafing.schema import run_identifiers, write_table

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "train_log.csv"
KL_NAME = "kl_trajectory.csv"
CONFIG_NAME = "config.json"


@dataclass
class Run:
    """A run being trained: its configuration and everything built from it."""

    config: TrainConfig
    device: torch.device
    data: DataSplits
    model: StagedModel
    step: TrainingStep
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_loader: DataLoader
    test_loader: DataLoader
    calib_loader: DataLoader  # fixed training images that recalibrate BN for the per-epoch test accuracy
    rng: random.Random  # the method's sampler (ST plans)
    trained_plan: Plan | None
    kl_plans: list[Plan]
    memory_format: torch.memory_format

    @property
    def out(self) -> Path:
        """The run folder."""
        return Path(self.config.out)


def check_config(config: TrainConfig) -> None:
    """Reject bad settings before any work starts."""
    if not config.out:
        raise LoafingError("--out is required (or --resume DIR)")
    validate_config(config)
    check_method_options(config)


def kl_trajectory_plans(model: StagedModel, config: TrainConfig) -> list[Plan]:
    """The plans whose KL to the main network is recorded: the ordered space, or a seeded sample of it."""
    plans = ordered_space(model.layout)
    if config.kl_plans is not None and config.kl_plans < len(plans):
        plans = sorted(random.Random(config.seed).sample(plans, config.kl_plans), key=plans.index)
    return plans


def training_data(config: TrainConfig) -> DataSplits:
    """The run's data in its model's input recipe; with `train_size`, a seeded subset of the training split
    (its augmented and plain views holding the same images)."""
    data = load_dataset(config.dataset, config.data_dir, config.download, get_spec(config.model).recipe,
                        config.image_size)
    if config.train_size is not None and config.train_size < len(data.train):
        chosen = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(config.seed))
        indices = chosen[:config.train_size].tolist()
        data = dataclasses.replace(data, train=Subset(data.train, indices), train_plain=Subset(data.train_plain, indices))
    return data


def build_run(config: TrainConfig) -> Run:
    """The model, method step, data, optimizer and schedule of a run, seeded by `config.seed`."""
    device = resolve_device(config.device)
    data = training_data(config)
    config = dataclasses.replace(config, num_classes=data.num_classes, run=config.run or Path(config.out).name)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    model = create_model(config.model, data.num_classes, config.width_mult)
    if data.mean is not None:
        model.set_normalization(data.mean, data.std)
    if config.bn_momentum is not None:
        set_bn_momentum(model, config.bn_momentum)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    step = get_method(config.method).build(model, config, rng)
    parameters = list(model.parameters()) + (list(step.modules.parameters()) if step.modules is not None else [])
    if step.modules is not None:
        step.modules.to(device, memory_format=memory_format)
    optimizer = torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return Run(
        config=config, device=device, data=data, model=model, step=step, optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs),
        train_loader=make_loader(data.train, config.batch_size, shuffle=True, seed=config.seed, workers=config.workers,
                                 drop_last=len(data.train) > config.batch_size),
        test_loader=make_loader(data.test, config.eval_batch_size, workers=config.workers),
        calib_loader=make_loader(seeded_subset(data.train_plain, config.calib_size, config.seed),
                                 config.eval_batch_size),
        rng=rng, trained_plan=trained_plan(model, config),
        kl_plans=kl_trajectory_plans(model, config) if config.kl_every else [], memory_format=memory_format)


def train_one_epoch(run: Run, desc: str, progress: bool = True) -> dict[str, float]:
    """One pass over the training data; returns mean loss, CE and KL and the number of examples."""
    run.model.train()
    if run.step.modules is not None:
        run.step.modules.train()
    totals = torch.zeros(3, device=run.device)
    n = 0
    for x, y in tqdm(run.train_loader, desc=desc, unit="batch", leave=False, disable=not progress):
        x = x.to(run.device, non_blocking=True, memory_format=run.memory_format)
        y = y.to(run.device, non_blocking=True)
        result = run.step.loss(x, y)
        run.optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        run.optimizer.step()
        totals += torch.stack([result.loss.detach(), result.ce.detach(), result.kl.detach()]) * len(y)
        n += len(y)
    loss, ce, kl = (totals / max(n, 1)).tolist()
    return {"loss": loss, "ce": ce, "kl": kl, "examples": n}


@contextlib.contextmanager
def untouched_rng(device: torch.device) -> Iterator[None]:
    """Evaluations in here (BN calibration runs dropout in train mode) leave the training's random stream as it was."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        yield


def evaluate(run: Run) -> dict[str, float]:
    """Test top-1 and loss of the trained network, with BN recalibrated and with the running BN statistics.

    The running statistics lag the weights early in training (torchvision's MobileNetV3 updates them
    with momentum 0.01), so the recalibrated accuracy is the one to trust; the other is what the
    network stored in its checkpoint computes.
    """
    running = classification_metrics(*predict(run.model, run.trained_plan, run.test_loader, run.device))
    plan = run.trained_plan or run.model.layout.main_plan
    with untouched_rng(run.device):
        recalibrated, _ = evaluate_plans(run.model, [plan], run.test_loader, run.calib_loader, run.device,
                                         progress=False, reference=plan)
    return {"test_top1_recalibrated": float(recalibrated["top1"].iloc[0]),
            "test_loss_recalibrated": float(recalibrated["loss"].iloc[0]),
            "test_top1_running_bn": running["top1"], "test_loss_running_bn": running["loss"]}


def record_kl(run: Run) -> pd.DataFrame:
    """KL(p_main || p_sub) and top-1 of every KL plan on the fixed probe set, each BN-recalibrated."""
    config = run.config
    probe = make_loader(seeded_subset(run.data.test, config.kl_probe_size, config.seed), config.eval_batch_size)
    df, _ = evaluate_plans(run.model, run.kl_plans, probe, run.calib_loader, run.device, progress=False)
    return df[["plan", "depths", "n_blocks", "is_main", "kl", "top1"]]


def peak_memory_mib(device: torch.device) -> tuple[float, str]:
    """CUDA peak allocated since the last reset, or the process's peak resident memory so far on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_peak_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_peak_rss"


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


def save_state(run: Run, epoch: int, log_rows: list[dict], kl_rows: list[dict]) -> None:
    """Write the configuration and the checkpoint of a finished epoch, then the tables it describes (each
    atomically): a run killed at any moment leaves at most a checkpoint ahead of its tables, never behind."""
    rng_state = {"torch": torch.get_rng_state(), "python": run.rng.getstate(),
                 "loader": run.train_loader.generator.get_state(),
                 "cuda": torch.cuda.get_rng_state_all() if run.device.type == "cuda" else None}
    method_state = run.step.modules.state_dict() if run.step.modules is not None else None
    write_json(dataclasses.asdict(run.config), run.out / CONFIG_NAME)
    # The checkpoint carries the rows too, so a resumed run never depends on which file was written last.
    save_checkpoint(run.out / CHECKPOINT_NAME, run.model, run.optimizer, run.scheduler, epoch,
                    dataclasses.asdict(run.config),
                    {"rng": rng_state, "log_rows": log_rows, "kl_rows": kl_rows, "method_state": method_state})
    if kl_rows:
        write_table(pd.DataFrame(kl_rows), run.out / KL_NAME, "kl_trajectory")
    else:  # nothing recorded by this run yet: a KL table here is another run's
        (run.out / KL_NAME).unlink(missing_ok=True)
    write_table(pd.DataFrame(log_rows), run.out / LOG_NAME, "train_log")


def restore_state(run: Run) -> tuple[int, list[dict], list[dict]]:
    """Load the last checkpoint into `run`; returns the epoch to continue with and the rows so far."""
    state = read_checkpoint(run.out / CHECKPOINT_NAME)
    run.model.load_state_dict(state["model"])
    if run.step.modules is not None:
        run.step.modules.load_state_dict(state["method_state"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    if run.device.type == "cuda" and state["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    run.rng.setstate(state["rng"]["python"])
    run.train_loader.generator.set_state(state["rng"]["loader"])
    return state["epoch"] + 1, state["log_rows"], state["kl_rows"]


def train(config: TrainConfig, progress: bool = True, overwrite: bool = False, resume: bool = False) -> pd.DataFrame:
    """Train a run into `config.out` (checkpoint.pt, train_log.csv, config.json, kl_trajectory.csv).

    With `resume`, continue from the last complete epoch in `config.out`; the result is bit-identical
    on the CPU to a run that was never interrupted. The folder is locked for the run: a second process
    training into it gets a one-line error.
    """
    check_config(config)
    out = check_output_folder(config.out)
    with run_folder_lock(out):
        if resume and not (out / CHECKPOINT_NAME).exists():
            raise LoafingError(f"{str(out)!r} holds no checkpoint to resume")
        if not resume and (out / CHECKPOINT_NAME).exists() and not overwrite:
            raise LoafingError(f"{str(out)!r} already holds a run; pass --overwrite, --resume, or another --out")
        return _train(config, progress, resume)


def _train(config: TrainConfig, progress: bool, resume: bool) -> pd.DataFrame:
    run = build_run(config)
    config = run.config
    ids = run_identifiers(dataclasses.asdict(config), config.dataset)
    first_epoch, log_rows, kl_rows = restore_state(run) if resume else (1, [], [])

    for epoch in tqdm(range(first_epoch, config.epochs + 1), desc=f"{config.method} {config.model}",
                      unit="epoch", initial=first_epoch - 1, total=config.epochs, disable=not progress):
        if run.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(run.device)
        start = time.perf_counter()
        losses = train_one_epoch(run, desc=f"epoch {epoch}", progress=progress)
        if run.device.type == "cuda":
            torch.cuda.synchronize(run.device)
        seconds = time.perf_counter() - start
        if not math.isfinite(losses["loss"]):
            kept = f"the checkpoint of epoch {epoch - 1} is kept" if epoch > 1 else "no checkpoint was written"
            raise LoafingError(f"training diverged: the mean loss of epoch {epoch} is {losses['loss']}; {kept} "
                               "(try a lower --lr)")
        lr = run.optimizer.param_groups[0]["lr"]
        run.scheduler.step()
        memory, memory_kind = peak_memory_mib(run.device)
        log_rows.append({**ids, "epoch": epoch, "lr": lr, "loss": losses["loss"], "ce": losses["ce"],
                         "kl": losses["kl"], **evaluate(run), "seconds": seconds,
                         "examples_per_s": losses["examples"] / seconds, "peak_memory_mib": memory,
                         "memory_kind": memory_kind})
        if run.kl_plans and (epoch % config.kl_every == 0 or epoch == config.epochs):
            with untouched_rng(run.device):  # recording the KL must not change what is trained
                kl_rows += [{**ids, "epoch": epoch, **row} for row in record_kl(run).to_dict("records")]
        save_state(run, epoch, log_rows, kl_rows)
    return pd.DataFrame(log_rows)
