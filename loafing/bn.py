"""BatchNorm recalibration (paper Appendix C.2) and guards for the running statistics."""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import nn

from loafing.plans import Plan


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer of `model`."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def set_bn_momentum(model: nn.Module, momentum: float) -> None:
    """Set the running-statistics momentum of every BN layer (training hyper-parameter, not architecture)."""
    for bn in batchnorms(model):
        bn.momentum = momentum


@contextlib.contextmanager
def preserved_bn_state(model: nn.Module) -> Iterator[None]:
    """Restore every BN running statistic, momentum and the train/eval mode on exit."""
    bns = batchnorms(model)
    saved = [(bn.momentum, bn.running_mean.clone(), bn.running_var.clone(),
              bn.num_batches_tracked.clone()) for bn in bns]
    was_training = model.training
    try:
        yield
    finally:
        for bn, (momentum, mean, var, tracked) in zip(bns, saved):
            bn.momentum = momentum
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            bn.num_batches_tracked.copy_(tracked)
        model.train(was_training)


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """In train mode, normalize with batch statistics but leave running statistics untouched.

    Used for the ST sub-network forward so that it does not disturb the main network's statistics.
    """
    bns = batchnorms(model)
    saved = [bn.track_running_stats for bn in bns]
    for bn in bns:
        bn.track_running_stats = False
    try:
        yield
    finally:
        for bn, track in zip(bns, saved):
            bn.track_running_stats = track


@contextlib.contextmanager
def synchronized_bn(model: nn.Module) -> Iterator[None]:
    """Inside, every BatchNorm2d normalizes with the batch statistics of all processes (SyncBatchNorm; CUDA only).

    The layers become SyncBatchNorm only for the training steps: rank 0's evaluations, which the other
    processes do not join, must keep normalizing on their own.
    """
    swapped = [(bn, type(bn)) for bn in batchnorms(model) if isinstance(bn, nn.BatchNorm2d)]
    for bn, _ in swapped:
        bn.__class__ = nn.SyncBatchNorm
        bn.process_group = None  # the default group: every process
    try:
        yield
    finally:
        for bn, kind in swapped:
            bn.__class__ = kind


@torch.no_grad()
def recalibrate_bn(model: nn.Module, plan: Plan | None, batches: Iterable[torch.Tensor],
                   device: torch.device | str = "cpu") -> None:
    """Reset BN statistics, re-estimate them as a cumulative average over `batches` run through `plan`, then eval.

    Layers outside the plan are reset too (they are unused by it); wrap in `preserved_bn_state`
    to keep the main network's statistics.
    """
    bns = batchnorms(model)
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    for x in batches:
        model(x.to(device, non_blocking=True), plan)
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    model.eval()
