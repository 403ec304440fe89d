"""Training a run of any registered method, epoch by epoch: checkpointed, logged and resumable."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import resource
import time
from pathlib import Path
from typing import Iterator

import pandas as pd
import torch
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from loafing.bn import has_batchnorm, recalibrate_bn, synchronized_bn
from loafing.checkpoint import load_weights, read_checkpoint, save_checkpoint
from loafing.config import AMP_DTYPES, TrainConfig, config_from_dict
from loafing.data import images_only, make_loader, seeded_subset
from loafing.device_data import DeviceBatches
from loafing.distributed import (World, agree, all_reduce_sum, current_world, gather_objects, process_device,
                                 process_group, shared_error, shared_tasks)
from loafing.errors import LoafingError
from loafing.evaluate import classification_metrics, predict, resolve_device
from loafing.io import check_output_folder, run_folder_lock, write_json
from loafing.plan_tree import evaluate_plans, evaluate_plans_across
from loafing.schema import run_identifiers, write_table
# A run's construction lives in training_run; its names stay importable from here.
from loafing.training_run import (Run, StepModule, build_run, check_config, kl_trajectory_plans,  # noqa: F401
                                  train_batches, training_data)

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "train_log.csv"
KL_NAME = "kl_trajectory.csv"
CONFIG_NAME = "config.json"


def autocast(run: Run) -> contextlib.AbstractContextManager:
    """The run's mixed precision for the training forward (`--amp`), or nothing."""
    dtype = AMP_DTYPES[run.config.amp]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(run.device.type, dtype=getattr(torch, dtype))


def train_one_epoch(run: Run, epoch: int, desc: str, progress: bool = True) -> dict[str, float]:
    """One pass over the training data (all ranks' shares); returns mean loss, CE and KL and the number of examples.

    Under fp16 a step whose loss overflowed is skipped by the gradient scaler, trains nothing, and is left
    out of the means; only an epoch of nothing but such steps has non-finite means (diverged)."""
    run.trained.train()
    if isinstance(run.train_loader.sampler, DistributedSampler):  # its permutation is drawn per epoch from seed + epoch
        run.train_loader.sampler.set_epoch(epoch)
    totals = torch.zeros(4, device=run.device, dtype=torch.float64)  # loss, CE, KL (each x examples), examples
    n = 0
    sync = synchronized_bn(run.trained) if run.config.sync_bn else contextlib.nullcontext()
    with sync:
        for x, y in tqdm(run.train_loader, desc=desc, unit="batch", leave=False, disable=not progress):
            x = x.to(run.device, non_blocking=True, memory_format=run.memory_format)
            y = y.to(run.device, non_blocking=True)
            with autocast(run):
                loss, ce, kl = run.trained(x, y)
            run.optimizer.zero_grad(set_to_none=True)
            run.scaler.scale(loss).backward()
            run.scaler.step(run.optimizer)
            run.scaler.update()
            if run.config.lr_step == "iteration":
                run.scheduler.step()
            step = torch.stack([loss.detach(), ce.detach(), kl.detach(), loss.new_ones(())]).double() * len(y)
            if run.scaler.is_enabled():
                step = torch.where(torch.isfinite(step[0]), step, torch.zeros_like(step))
            totals += step
            n += len(y)
    loss, ce, kl, counted, n = all_reduce_sum(run.world, torch.cat([totals, totals.new_tensor([n])])).tolist()
    if counted == 0:
        return {"loss": math.nan, "ce": math.nan, "kl": math.nan, "examples": int(n)}
    return {"loss": loss / counted, "ce": ce / counted, "kl": kl / counted, "examples": int(n)}


@contextlib.contextmanager
def untouched_rng(device: torch.device) -> Iterator[None]:
    """Evaluations in here (BN calibration runs dropout in train mode) leave the training's random stream as it was."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        yield


def evaluate(run: Run) -> dict[str, float]:
    """Test top-1 and loss of the trained network, with BN recalibrated and with the running BN statistics.

    The running statistics lag the weights early in training (torchvision's MobileNetV3 updates them
    with momentum 0.01), so the recalibrated accuracy is the one to trust; the other is what the
    network stored in its checkpoint computes. Under torchrun the two evaluations run on two ranks.
    """
    plan = run.trained_plan or run.model.layout.main_plan

    def with_running_bn() -> dict[str, float]:
        return classification_metrics(*predict(run.model, run.trained_plan, run.test_loader, run.device))

    def recalibrated() -> dict[str, float]:
        with untouched_rng(run.device):
            df, _ = evaluate_plans(run.model, [plan], run.test_loader, run.calib_loader, run.device,
                                   progress=False, reference=plan)
        return {"top1": float(df["top1"].iloc[0]), "loss": float(df["loss"].iloc[0])}

    if not has_batchnorm(run.model):  # nothing to recalibrate (LayerNorm networks): one pass gives both columns
        running = recalibrated_metrics = with_running_bn()
    else:
        # Running statistics first, so rank 0 computes them: DDP hands every rank rank 0's buffers at the start of a
        # step, so after the last step each rank holds its own, and the checkpoint keeps rank 0's.
        running, recalibrated_metrics = shared_tasks(run.world, [with_running_bn, recalibrated])
    return {"test_top1_recalibrated": recalibrated_metrics["top1"],
            "test_loss_recalibrated": recalibrated_metrics["loss"],
            "test_top1_running_bn": running["top1"], "test_loss_running_bn": running["loss"]}


def reestimate_bn(run: Run, epoch: int) -> None:
    """Replace the main network's running BN statistics by those of `bn_reestimate` training images (a fresh
    seeded subset each epoch). Training normalizes with batch statistics, so the weights are unchanged; what
    changes is what the checkpoint holds and what the running-BN test accuracy measures."""
    images = seeded_subset(run.data.train_plain, run.config.bn_reestimate, run.config.seed + epoch)
    plan = run.trained_plan or run.model.layout.main_plan
    with untouched_rng(run.device):
        recalibrate_bn(run.model, plan, images_only(make_loader(images, run.config.eval_batch_size)), run.device)


def record_kl(run: Run) -> pd.DataFrame:
    """KL(p_main || p_sub) and top-1 of every KL plan on the fixed probe set, each BN-recalibrated; under torchrun
    the plans are shared out over the ranks and every rank returns the whole table."""
    config = run.config
    probe = make_loader(seeded_subset(run.data.test, config.kl_probe_size, config.seed), config.eval_batch_size)
    df = evaluate_plans_across(run.world, run.model, run.kl_plans, probe, run.calib_loader, run.device,
                               progress=False)
    return df[["plan", "depths", "n_blocks", "is_main", "kl", "top1"]].assign(granularity=run.model.granularity)


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
    # KL rows of a run started before plans had a view (the granularity column) were all of blocks.
    return state["epoch"] + 1, state["log_rows"], [{"granularity": "block", **row} for row in state["kl_rows"]]


def train(config: TrainConfig, progress: bool = True, overwrite: bool = False, resume: bool = False) -> pd.DataFrame:
    """Train a run into `config.out` (checkpoint.pt, train_log.csv, config.json, kl_trajectory.csv).

    With `resume`, continue from the last complete epoch in `config.out`; the result is bit-identical
    on the CPU to a run that was never interrupted. The folder is locked for the run: a second process
    training into it gets a one-line error. Started by torchrun, the processes train one run together
    (DDP); rank 0 holds the lock, shows the progress and writes, and returns the log (the others an empty one).
    """
    world = current_world()
    device = process_device(world, resolve_device(config.device))
    with process_group(world, device), contextlib.ExitStack() as held:
        def check() -> None:
            check_config(config, world, device)
            out = check_output_folder(config.out, folders=[config.data_dir])
            held.enter_context(run_folder_lock(out))
            if resume and not (out / CHECKPOINT_NAME).exists():
                raise LoafingError(f"{str(out)!r} holds no checkpoint to resume")
            if resume:
                check_resumable(out)
            if resume and config.world_size != world.size:
                raise LoafingError(f"the run in {str(out)!r} was trained by {config.world_size} process(es); resume "
                                   f"it with as many (torchrun --nproc_per_node {config.world_size}), not {world.size}")
            if not resume and (out / CHECKPOINT_NAME).exists() and not overwrite:
                raise LoafingError(f"{str(out)!r} already holds a run; pass --overwrite, --resume, or another --out")
        agree(world, check)
        return _train(config, world, device, progress and world.is_main, resume)


def _train(config: TrainConfig, world: World, device: torch.device, progress: bool, resume: bool) -> pd.DataFrame:
    run = build_run(config, world, device, resume)
    config = run.config
    ids = run_identifiers(dataclasses.asdict(config), config.dataset)
    first_epoch, log_rows, kl_rows = restore_state(run) if resume else (1, [], [])

    for epoch in tqdm(range(first_epoch, config.epochs + 1), desc=f"{config.method} {config.model}",
                      unit="epoch", initial=first_epoch - 1, total=config.epochs, disable=not progress):
        if run.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(run.device)
        lr = run.optimizer.param_groups[0]["lr"]  # the epoch's first step's, also when the schedule steps per iteration
        start = time.perf_counter()
        losses = train_one_epoch(run, epoch, desc=f"epoch {epoch}", progress=progress)
        if run.device.type == "cuda":
            torch.cuda.synchronize(run.device)
        seconds = time.perf_counter() - start
        if not math.isfinite(losses["loss"]):  # the losses are every rank's, so every rank stops here
            kept = f"the checkpoint of epoch {epoch - 1} is kept" if epoch > 1 else "no checkpoint was written"
            raise shared_error(world, f"training diverged: the mean loss of epoch {epoch} is {losses['loss']}; {kept} "
                               "(try a lower --lr)")
        if config.lr_step == "epoch":
            run.scheduler.step()
        if config.bn_reestimate:
            reestimate_bn(run, epoch)
        # Every rank takes a share of the evaluations and ends up with the same rows; rank 0 writes them.
        memory, memory_kind = peak_memory_mib(run.device)
        log_rows.append({**ids, "epoch": epoch, "lr": lr, "loss": losses["loss"], "ce": losses["ce"],
                         "kl": losses["kl"], **evaluate(run), "seconds": seconds,
                         "examples_per_s": losses["examples"] / seconds, "peak_memory_mib": memory,
                         "memory_kind": memory_kind})
        if run.kl_plans and (epoch % config.kl_every == 0 or epoch == config.epochs):
            with untouched_rng(run.device):  # recording the KL must not change what is trained
                kl_rows += [{**ids, "epoch": epoch, **row} for row in record_kl(run).to_dict("records")]
        save_state(run, epoch, log_rows, kl_rows)
    return pd.DataFrame(log_rows if world.is_main else [])
