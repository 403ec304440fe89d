"""Two networks in one batch: BatchNorm that treats the halves of a stacked batch as separate batches.

The ST step runs the main network and the sampled sub-network through the blocks they both use as
one stacked batch (main examples first), which costs far less than two calls on small feature maps.
Every other layer of the supported models works per example (Dropout draws an independent mask
per element, so one call over the stack is distributed as two calls; on the CPU it even draws the
same masks). BN does not, so inside `stacked_batches(n)` it treats the first n examples and the
rest as two batches, each normalized with its own batch statistics; only the first (the main
network's) updates the running statistics.
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from loafing.errors import LoafingError

_FIRST_SEGMENT: ContextVar[int | None] = ContextVar("loafing_first_segment", default=None)


@contextlib.contextmanager
def stacked_batches(first: int) -> Iterator[None]:
    """Inside: segment-aware layers treat the first `first` examples of a batch and the rest as two batches."""
    token = _FIRST_SEGMENT.set(first)
    try:
        yield
    finally:
        _FIRST_SEGMENT.reset(token)


class SegmentedBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d; in training inside `stacked_batches`, per-segment batch statistics, running ones from the first."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = _FIRST_SEGMENT.get()
        if first is None or not self.training:
            return super().forward(x)
        main, rest = torch.split(x, [first, x.shape[0] - first])
        return torch.cat([super().forward(main),
                          F.batch_norm(rest, None, None, self.weight, self.bias, True, 0.0, self.eps)])


def _mixes_batches(m: nn.Module) -> bool:
    """Whether a layer's output or state depends on the other examples of its batch."""
    if isinstance(m, nn.modules.instancenorm._InstanceNorm):
        return m.track_running_stats
    return isinstance(m, nn.modules.batchnorm._NormBase)


def make_segment_aware(module: nn.Module) -> nn.Module:
    """Make every BatchNorm2d of `module` segment-aware in place (same parameters, same state dict).

    Any other layer that keeps running statistics (a BatchNorm subclass such as SyncBatchNorm or a
    fused norm-activation layer, BatchNorm1d/3d, InstanceNorm with tracked statistics) would mix the two
    stacked batches without a word, so it is refused: build the model with plain nn.BatchNorm2d layers.
    """
    for m in module.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = SegmentedBatchNorm2d
        elif _mixes_batches(m) and type(m) is not SegmentedBatchNorm2d:
            raise LoafingError(f"{type(m).__name__} layers are not supported: the ST step and the BN machinery "
                               "handle nn.BatchNorm2d only; build the model with nn.BatchNorm2d norm layers")
    return module
