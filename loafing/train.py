"""Training a run of any registered method, epoch by epoch: checkpointed, logged and resumable."""
from __future__ import annotations

import contextlib
import dataclasses
import math
import resource
import time
from typing import Iterator

import pandas as pd
import torch
from torch.utils.data import DistributedSampler
from tqdm.auto import tqdm

from loafing.bn import has_batchnorm, recalibrate_bn, synchronized_bn
from loafing.config import AMP_DTYPES, TrainConfig
from loafing.data import calibration_images, images_only, make_loader, seeded_subset
from loafing.distributed import (World, agree, all_reduce_sum, current_world, process_device,
                                 process_group, shared_error, shared_tasks)
from loafing.errors import LoafingError
from loafing.evaluate import classification_metrics, predict, resolve_device
from loafing.io import check_output_folder, run_folder_lock
from loafing.live_log import live_log
from loafing.plan_tree import evaluate_plans, evaluate_plans_across
from loafing.run_state import CHECKPOINT_NAME, check_resumable, restore_state, save_state
from loafing.schema import run_identifiers
# A run's construction lives in training_run; its names stay importable from here.
from loafing.training_run import (Run, StepModule, build_run, check_config, kl_trajectory_plans,  # noqa: F401
                                  train_batches, training_data)


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
    images = calibration_images(run.data, run.config.bn_reestimate, run.config.seed + epoch)
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
    live = live_log(run, first_epoch)  # TensorBoard scalars, where tensorboard is installed
    # Rows of epochs before a resume carry the run columns of then; the run's are those of now (e.g. its variant).
    log_rows, kl_rows = [{**row, **ids} for row in log_rows], [{**row, **ids} for row in kl_rows]

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
        live.record(log_rows[-1])  # before the checkpoint: a resume then purges what it trains again
        save_state(run, epoch, log_rows, kl_rows)
    return pd.DataFrame(log_rows if world.is_main else [])
