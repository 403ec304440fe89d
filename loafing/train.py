"""Training: common training (CT) and stimulative training (ST, paper Eq. 1 / Alg. 1), resumable."""
from __future__ import annotations

import dataclasses
import json
import random
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from loafing.bn import frozen_bn_stats, set_bn_momentum
from loafing.checkpoint import read_checkpoint, save_checkpoint
from loafing.data import DataSplits, load_dataset, make_loader, seeded_subset
from loafing.errors import LoafingError
from loafing.evaluate import classification_metrics, predict, resolve_device
from loafing.io import write_csv, write_json
from loafing.models import StagedModel, create_model
from loafing.plan_tree import evaluate_plans
from loafing.plans import Plan, ordered_space, parse_plan, restricted_ordered_space, sample_ordered_plan

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "train_log.csv"
KL_NAME = "kl_trajectory.csv"
CONFIG_NAME = "config.json"


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved next to its results. Defaults: paper Sec. 6 (CIFAR)."""

    model: str = "mobilenet_v3_large"
    width_mult: float = 1.0
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    method: str = "ct"
    lam: float = 1.0
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    weight_decay: float = 3e-5
    momentum: float = 0.9
    bn_momentum: float | None = None  # None: the model's own (torchvision's MobileNetV3: 0.01)
    channels_last: bool = False  # NHWC activations: same network, about 2x faster on CPU for MobileNetV3
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    eval_batch_size: int = 256
    plan: str | None = None  # train this sub-network alone instead of the main network
    space_size: int | None = None  # ST: sample from a seeded subset of this many ordered plans
    space_seed: int = 0
    st_step: str = "shared"
    kl_every: int = 0  # record KL(p_main || p_sub) of every plan every N epochs (0: never)
    kl_plans: int | None = None  # ... or of a seeded sample of this many plans
    kl_probe_size: int = 500
    kl_calib_size: int = 500
    out: str = "runs/run"
    run: str = ""
    num_classes: int = 0


@dataclass
class StepResult:
    """Losses of one optimization step."""

    loss: torch.Tensor
    ce: torch.Tensor
    kl: torch.Tensor


@dataclass
class StepContext:
    """What a step needs besides the batch: the KL weight, the ST sampler, the network being trained."""

    lam: float
    sample_plan: Callable[[], Plan]
    plan: Plan | None = None


def ct_step(model: StagedModel, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> StepResult:
    """Common training: cross-entropy of the trained network."""
    ce = F.cross_entropy(model(x, ctx.plan), y)
    return StepResult(ce, ce, torch.zeros((), device=x.device))


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(p_teacher || p_student), batch mean, with the teacher detached."""
    return F.kl_div(F.log_softmax(student_logits, 1), F.softmax(teacher_logits.detach(), 1),
                    reduction="batchmean")


def st_step_simple(model: StagedModel, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> StepResult:
    """ST as written in Alg. 1: a main forward, then a separate forward of one sampled sub-network."""
    main_logits = model(x)
    ce = F.cross_entropy(main_logits, y)
    plan = ctx.sample_plan()
    with frozen_bn_stats(model):
        sub_logits = model(x, plan)
    kl = kl_to_teacher(sub_logits, main_logits)
    return StepResult(ce + ctx.lam * kl, ce, kl)


def st_step_shared(model: StagedModel, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> StepResult:
    """ST in one graph: the common prefix once, later shared blocks on both batches stacked (same loss and gradients)."""
    main_logits, sub_logits = model.forward_with_subnetwork(x, ctx.sample_plan())
    ce = F.cross_entropy(main_logits, y)
    kl = kl_to_teacher(sub_logits, main_logits)
    return StepResult(ce + ctx.lam * kl, ce, kl)


METHODS = ("ct", "st")
ST_STEPS: dict[str, Callable[..., StepResult]] = {"shared": st_step_shared, "simple": st_step_simple}


def train_one_epoch(model: StagedModel, loader, optimizer: torch.optim.Optimizer,
                    step: Callable[..., StepResult], ctx: StepContext, device: torch.device, desc: str,
                    progress: bool = True,
                    memory_format: torch.memory_format = torch.contiguous_format) -> dict[str, float]:
    """One pass over `loader`; returns mean loss, CE and KL."""
    model.train()
    totals = torch.zeros(3, device=device)
    n = 0
    for x, y in tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress):
        x = x.to(device, non_blocking=True, memory_format=memory_format)
        y = y.to(device, non_blocking=True)
        result = step(model, x, y, ctx)
        optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        optimizer.step()
        totals += torch.stack([result.loss.detach(), result.ce.detach(), result.kl.detach()]) * len(y)
        n += len(y)
    loss, ce, kl = (totals / max(n, 1)).tolist()
    return {"loss": loss, "ce": ce, "kl": kl, "examples": n}


def check_config(config: TrainConfig) -> None:
    """Reject bad settings before any work starts."""
    if config.method not in METHODS:
        raise LoafingError(f"unknown method {config.method!r}; valid choices: {', '.join(METHODS)}")
    if config.st_step not in ST_STEPS:
        raise LoafingError(f"unknown ST step {config.st_step!r}; valid choices: {', '.join(ST_STEPS)}")
    for name in ("epochs", "batch_size", "eval_batch_size", "kl_probe_size", "kl_calib_size"):
        if getattr(config, name) < 1:
            raise LoafingError(f"--{name.replace('_', '-')} must be at least 1")
    if config.kl_every < 0:
        raise LoafingError("--kl-every must be 0 (off) or a positive number of epochs")
    if config.kl_plans is not None and config.kl_plans < 1:
        raise LoafingError("--kl-plans must be at least 1")
    if config.lr <= 0:
        raise LoafingError("--lr must be positive")
    if config.lam < 0:
        raise LoafingError("--lam must be non-negative")
    if config.bn_momentum is not None and not 0 < config.bn_momentum <= 1:
        raise LoafingError("--bn-momentum must be in (0, 1]")
    if config.plan and config.method != "ct":
        raise LoafingError("--plan trains a sub-network alone and needs --method ct")
    if config.space_size is not None and config.method != "st":
        raise LoafingError("--space-size restricts ST's sampling space and needs --method st")


def kl_trajectory_plans(model: StagedModel, config: TrainConfig) -> list[Plan]:
    """The plans whose KL to the main network is recorded: the ordered space, or a seeded sample of it."""
    plans = ordered_space(model.layout)
    if config.kl_plans is not None and config.kl_plans < len(plans):
        plans = sorted(random.Random(config.seed).sample(plans, config.kl_plans), key=plans.index)
    return plans


def record_kl(model: StagedModel, plans: list[Plan], data: DataSplits, config: TrainConfig,
              device: torch.device) -> pd.DataFrame:
    """KL(p_main || p_sub) and top-1 of every plan on the fixed probe set, each BN-recalibrated."""
    probe = make_loader(seeded_subset(data.test, config.kl_probe_size, config.seed), config.eval_batch_size)
    calib = make_loader(seeded_subset(data.train_plain, config.kl_calib_size, config.seed), config.eval_batch_size)
    df, _ = evaluate_plans(model, plans, probe, calib, device, progress=False)
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
    return TrainConfig(**json.loads(path.read_text()))


def train(config: TrainConfig, progress: bool = True, overwrite: bool = False, resume: bool = False) -> pd.DataFrame:
    """Train a run into `config.out` (checkpoint.pt, train_log.csv, config.json, kl_trajectory.csv).

    With `resume`, continue from the last complete epoch in `config.out`; the result is bit-identical
    on the CPU to a run that was never interrupted.
    """
    check_config(config)
    out = Path(config.out)
    if resume and not (out / CHECKPOINT_NAME).exists():
        raise LoafingError(f"{str(out)!r} holds no checkpoint to resume")
    if not resume and (out / CHECKPOINT_NAME).exists() and not overwrite:
        raise LoafingError(f"{str(out)!r} already holds a run; pass --overwrite, --resume, or another --out")
    device = resolve_device(config.device)
    data = load_dataset(config.dataset, config.data_dir, config.download)
    config = dataclasses.replace(config, num_classes=data.num_classes, run=config.run or out.name)

    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    model = create_model(config.model, data.num_classes, config.width_mult)
    model.set_normalization(data.mean, data.std)
    if config.bn_momentum is not None:
        set_bn_momentum(model, config.bn_momentum)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    trained_plan = parse_plan(config.plan) if config.plan else None
    if trained_plan is not None:
        model.check_plan(trained_plan)
    if config.space_size is not None:
        space = restricted_ordered_space(model.layout, config.space_size, config.space_seed)
        sample_plan = lambda: rng.choice(space)  # noqa: E731
    else:
        sample_plan = lambda: sample_ordered_plan(model.layout, rng)  # noqa: E731
    ctx = StepContext(config.lam, sample_plan, trained_plan)
    step = ct_step if config.method == "ct" else ST_STEPS[config.st_step]
    kl_plans = kl_trajectory_plans(model, config) if config.kl_every else []

    train_loader = make_loader(data.train, config.batch_size, shuffle=True, seed=config.seed,
                               workers=config.workers, drop_last=len(data.train) > config.batch_size)
    test_loader = make_loader(data.test, config.eval_batch_size, workers=config.workers)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    config_dict = dataclasses.asdict(config)
    ids = {"run": config.run, "model": config.model, "method": config.method, "lam": config.lam,
           "seed": config.seed, "dataset": config.dataset, "trained_plan": config.plan or "",
           "space_size": config.space_size}

    log_rows: list[dict[str, Any]] = []
    kl_rows: list[dict[str, Any]] = []
    first_epoch = 1
    if resume:
        state = read_checkpoint(out / CHECKPOINT_NAME)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        rng.setstate(state["rng"]["python"])
        train_loader.generator.set_state(state["rng"]["loader"])
        log_rows, kl_rows = state["log_rows"], state["kl_rows"]
        first_epoch = state["epoch"] + 1
    else:
        write_json(config_dict, out / CONFIG_NAME)

    for epoch in tqdm(range(first_epoch, config.epochs + 1), desc=f"{config.method} {config.model}",
                      unit="epoch", initial=first_epoch - 1, total=config.epochs, disable=not progress):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        losses = train_one_epoch(model, train_loader, optimizer, step, ctx, device, desc=f"epoch {epoch}",
                                 progress=progress, memory_format=memory_format)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        memory, memory_kind = peak_memory_mib(device)
        test = classification_metrics(*predict(model, trained_plan, test_loader, device))
        log_rows.append({**ids, "epoch": epoch, "lr": lr, "loss": losses["loss"], "ce": losses["ce"],
                         "kl": losses["kl"], "test_top1": test["top1"], "test_loss": test["loss"],
                         "seconds": seconds, "examples_per_s": losses["examples"] / seconds,
                         "peak_memory_mib": memory, "memory_kind": memory_kind})
        if kl_plans and (epoch % config.kl_every == 0 or epoch == config.epochs):
            for row in record_kl(model, kl_plans, data, config, device).to_dict("records"):
                kl_rows.append({**ids, "epoch": epoch, **row})
            write_csv(pd.DataFrame(kl_rows), out / KL_NAME)
        write_csv(pd.DataFrame(log_rows), out / LOG_NAME)
        rng_state = {"torch": torch.get_rng_state(), "python": rng.getstate(),
                     "loader": train_loader.generator.get_state(),
                     "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None}
        # The checkpoint carries the rows too, so a resumed run never depends on which file was written last.
        save_checkpoint(out / CHECKPOINT_NAME, model, optimizer, scheduler, epoch, config_dict,
                        {"rng": rng_state, "log_rows": log_rows, "kl_rows": kl_rows})
    return pd.DataFrame(log_rows)
