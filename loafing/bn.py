"""BatchNorm recalibration (paper Appendix C.2) and guards for the running statistics."""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import nn

from loafing.errors import LoafingError
from loafing.plans import Plan
from loafing.segments import is_segment_aware, make_segment_aware


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer of `model`."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def batchnorms_with_statistics(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of `model` that keep running statistics (not those that normalize by each batch)."""
    return [bn for bn in batchnorms(model) if bn.running_mean is not None]


def has_batchnorm(model: nn.Module) -> bool:
    """Whether `model` has a BatchNorm layer with running statistics, i.e. anything to recalibrate."""
    return any(bn.track_running_stats for bn in batchnorms_with_statistics(model))


def set_bn_momentum(model: nn.Module, momentum: float) -> None:
    """Set the running-statistics momentum of every BN layer (training hyper-parameter, not architecture)."""
    for bn in batchnorms(model):
        bn.momentum = momentum


@contextlib.contextmanager
def preserved_bn_state(model: nn.Module) -> Iterator[None]:
    """Restore every BN running statistic, momentum and the train/eval mode on exit."""
    bns = batchnorms_with_statistics(model)
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


def _replace_modules(model: nn.Module, replacements: dict[nn.Module, nn.Module]) -> None:
    """Register each replacement in its original's place, wherever in `model` that is registered."""
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):  # named_children() would list a shared module once
            if child is not None and child in replacements:
                setattr(parent, name, replacements[child])


def _synchronized(bn: nn.modules.batchnorm._BatchNorm) -> nn.SyncBatchNorm:
    """A SyncBatchNorm holding `bn`'s own parameters and statistic tensors and its settings."""
    sync = nn.SyncBatchNorm(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, device="meta")
    sync.weight, sync.bias = bn.weight, bn.bias
    sync.running_mean, sync.running_var = bn.running_mean, bn.running_var
    sync.num_batches_tracked = bn.num_batches_tracked
    if is_segment_aware(bn):
        make_segment_aware(sync)
    return sync.train(bn.training)


@contextlib.contextmanager
def synchronized_bn(model: nn.Module) -> Iterator[None]:
    """Inside, every BatchNorm layer normalizes with the batch statistics of all processes (SyncBatchNorm; CUDA only).

    Each layer is replaced, as `torch.nn.SyncBatchNorm.convert_sync_batchnorm` does, by a SyncBatchNorm that
    holds the same tensors, and put back on exit: rank 0's evaluations, which the other processes do not join,
    must keep normalizing on their own. A BatchNorm subclass with its own forward (a fused norm-activation
    layer) would lose what its forward adds, so it is refused.
    """
    replacements: dict[nn.Module, nn.Module] = {}
    for bn in batchnorms(model):
        if isinstance(bn, nn.SyncBatchNorm):
            continue
        if type(bn).forward is not nn.modules.batchnorm._BatchNorm.forward:
            raise LoafingError(f"--sync-bn cannot synchronize {type(bn).__name__} layers: they have their own "
                               "forward, which SyncBatchNorm would drop; train without --sync-bn")
        replacements[bn] = _synchronized(bn)
    _replace_modules(model, replacements)
    try:
        yield
    finally:
        _replace_modules(model, {sync: bn for bn, sync in replacements.items()})
        for bn, sync in replacements.items():
            bn.train(sync.training)


def batches_of_two_or_more(batches: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    """`batches` in order, each batch of one image joined to a neighbour: BN in train mode cannot normalize a
    single value per channel (a 1x1 feature map). Only a whole set of one image stays one batch of one."""
    ready = part = None
    for x in batches:
        part = x if part is None else torch.cat([part, x])
        if len(part) >= 2:
            if ready is not None:
                yield ready
            ready, part = part, None
    if part is not None:  # a trailing batch of one joins the batch before it
        ready = part if ready is None else torch.cat([ready, part])
    if ready is not None:
        yield ready


@contextlib.contextmanager
def whole_set_statistics(model: nn.Module) -> Iterator[None]:
    """Inside, in train mode, every BN layer normalizes with batch statistics and accumulates into the running
    statistics installed in it the mean and unbiased variance of all the inputs it has seen inside.

    The statistics are those of the whole set, as if it were one batch, whatever the batch sizes (PyTorch's
    cumulative average, momentum None, averages per-batch means and variances instead). They accumulate per
    installed tensor (the plan tree installs each prefix's own); `num_batches_tracked` counts the batches.
    """
    names = {m: name for name, m in model.named_modules()}
    counts: dict[int, tuple[torch.Tensor, int]] = {}  # id(running_mean) -> (it, values per channel so far)

    def accumulate(bn: nn.modules.batchnorm._BatchNorm, inputs: tuple) -> None:
        if not bn.training:
            return
        x = inputs[0].detach()
        n = x.numel() // x.shape[1]
        if n < 2:
            size = "x".join(map(str, x.shape[2:])) or "1"
            raise LoafingError(f"BN layer {names.get(bn, type(bn).__name__)!r} sees a single value per channel (one "
                               f"image, {size} feature maps): its variance cannot be estimated from a calibration "
                               "set of one image; calibrate on 2 or more images")
        var, mean = torch.var_mean(x, dim=[d for d in range(x.dim()) if d != 1], correction=0)
        mean, m2 = mean.to(bn.running_mean.dtype), var.to(bn.running_var.dtype) * n
        seen = counts.get(id(bn.running_mean), (bn.running_mean, 0))[1]
        if seen:  # Chan et al.'s pairwise update of (count, mean, sum of squared deviations)
            delta = mean - bn.running_mean
            m2 += bn.running_var * (seen - 1) + delta.square() * (seen * n / (seen + n))
            mean = bn.running_mean + delta * (n / (seen + n))
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(m2 / (seen + n - 1))
        bn.num_batches_tracked.add_(1)
        counts[id(bn.running_mean)] = (bn.running_mean, seen + n)

    hooks = [bn.register_forward_pre_hook(accumulate) for bn in batchnorms_with_statistics(model)]
    try:
        with frozen_bn_stats(model):
            yield
    finally:
        for hook in hooks:
            hook.remove()


@torch.no_grad()
def recalibrate_bn(model: nn.Module, plan: Plan | None, batches: Iterable[torch.Tensor],
                   device: torch.device | str = "cpu") -> None:
    """Reset BN statistics, re-estimate them as the statistics of all `batches` run through `plan`, then eval.

    A batch of one image is joined to a neighbour (`batches_of_two_or_more`). Layers outside the plan are
    reset too (they are unused by it); wrap in `preserved_bn_state` to keep the main network's statistics.
    """
    if not has_batchnorm(model):  # a LayerNorm network: the calibration pass would change nothing
        model.eval()
        return
    for bn in batchnorms(model):
        bn.reset_running_stats()
    model.train()
    with whole_set_statistics(model):
        for x in batches_of_two_or_more(batches):
            model(x.to(device, non_blocking=True), plan)
    model.eval()
