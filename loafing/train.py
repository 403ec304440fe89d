"""Training: common training (CT) and stimulative training (ST, paper Eq. 1 / Alg. 1)."""
from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from loafing.bn import frozen_bn_stats
from loafing.checkpoint import save_checkpoint
from loafing.data import load_dataset, make_loader
from loafing.errors import LoafingError
from loafing.evaluate import classification_metrics, predict, resolve_device
from loafing.io import write_csv, write_json
from loafing.models import StagedModel, create_model
from loafing.plans import sample_ordered_plan

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "train_log.csv"
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
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    eval_batch_size: int = 256
    out: str = "runs/run"
    run: str = ""
    num_classes: int = 0


@dataclass
class StepResult:
    """Losses of one optimization step."""

    loss: torch.Tensor
    ce: torch.Tensor
    kl: torch.Tensor


def ct_step(model: StagedModel, x: torch.Tensor, y: torch.Tensor, lam: float,
            rng: random.Random) -> StepResult:
    """Common training: cross-entropy of the main network."""
    ce = F.cross_entropy(model(x), y)
    return StepResult(ce, ce, torch.zeros((), device=x.device))


def st_step(model: StagedModel, x: torch.Tensor, y: torch.Tensor, lam: float,
            rng: random.Random) -> StepResult:
    """Stimulative training: CE(main) + lam * KL(p_main || p_sub) for one sampled ordered sub-network."""
    main_logits = model(x)
    ce = F.cross_entropy(main_logits, y)
    plan = sample_ordered_plan(model.layout, rng)
    with frozen_bn_stats(model):
        sub_logits = model(x, plan)
    kl = kl_to_teacher(sub_logits, main_logits)
    return StepResult(ce + lam * kl, ce, kl)


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(p_teacher || p_student), batch mean, with the teacher detached."""
    return F.kl_div(F.log_softmax(student_logits, 1), F.softmax(teacher_logits.detach(), 1),
                    reduction="batchmean")


METHODS: dict[str, Callable[..., StepResult]] = {"ct": ct_step, "st": st_step}


def train_one_epoch(model: StagedModel, loader, optimizer: torch.optim.Optimizer, step: Callable[..., StepResult],
                    lam: float, rng: random.Random, device: torch.device, desc: str,
                    progress: bool = True) -> dict[str, float]:
    """One pass over `loader`; returns mean loss, CE and KL."""
    model.train()
    totals = torch.zeros(3, device=device)
    n = 0
    bar = tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress)
    for x, y in bar:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        result = step(model, x, y, lam, rng)
        optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        optimizer.step()
        totals += torch.stack([result.loss.detach(), result.ce.detach(), result.kl.detach()]) * len(y)
        n += len(y)
    loss, ce, kl = (totals / max(n, 1)).tolist()
    return {"loss": loss, "ce": ce, "kl": kl}


def check_config(config: TrainConfig) -> None:
    """Reject bad settings before any work starts."""
    if config.method not in METHODS:
        raise LoafingError(f"unknown method {config.method!r}; valid choices: {', '.join(METHODS)}")
    for name in ("epochs", "batch_size", "eval_batch_size"):
        if getattr(config, name) < 1:
            raise LoafingError(f"--{name.replace('_', '-')} must be at least 1")
    if config.lr <= 0:
        raise LoafingError("--lr must be positive")
    if config.lam < 0:
        raise LoafingError("--lam must be non-negative")


def train(config: TrainConfig, progress: bool = True, overwrite: bool = False) -> pd.DataFrame:
    """Train a run into `config.out`: checkpoint.pt, train_log.csv, config.json. Returns the log."""
    check_config(config)
    out = Path(config.out)
    if (out / CHECKPOINT_NAME).exists() and not overwrite:
        raise LoafingError(f"{str(out)!r} already holds a run; pass --overwrite or choose another --out")
    device = resolve_device(config.device)
    data = load_dataset(config.dataset, config.data_dir, config.download)
    config = dataclasses.replace(config, num_classes=data.num_classes, run=config.run or out.name)

    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    model = create_model(config.model, data.num_classes, config.width_mult)
    model.set_normalization(data.mean, data.std)
    model.to(device)
    train_loader = make_loader(data.train, config.batch_size, shuffle=True, seed=config.seed,
                               workers=config.workers, drop_last=len(data.train) > config.batch_size)
    test_loader = make_loader(data.test, config.eval_batch_size, workers=config.workers)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    step = METHODS[config.method]
    config_dict = dataclasses.asdict(config)
    write_json(config_dict, out / CONFIG_NAME)

    rows = []
    for epoch in tqdm(range(1, config.epochs + 1), desc=f"{config.method} {config.model}", unit="epoch",
                      disable=not progress):
        start = time.perf_counter()
        losses = train_one_epoch(model, train_loader, optimizer, step, config.lam, rng, device,
                                 desc=f"epoch {epoch}", progress=progress)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        seconds = time.perf_counter() - start
        test = classification_metrics(*predict(model, None, test_loader, device))
        rows.append({"run": config.run, "model": config.model, "method": config.method, "lam": config.lam,
                     "seed": config.seed, "dataset": config.dataset, "epoch": epoch, "lr": lr, **losses,
                     "test_top1": test["top1"], "test_loss": test["loss"], "seconds": seconds})
        save_checkpoint(out / CHECKPOINT_NAME, model, optimizer, scheduler, epoch, config_dict)
        write_csv(pd.DataFrame(rows), out / LOG_NAME)
    return pd.DataFrame(rows)
