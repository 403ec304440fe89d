"""Two networks in one batch: BatchNorm that treats the halves of a stacked batch as separate batches.

The ST step runs the main network and the sampled sub-network through the blocks they both use as
one stacked batch (main examples first), which costs far less than two calls on small feature maps.
Every other layer of the supported models works per example (Dropout draws an independent mask
per element, so one call over the stack is distributed as two calls; on the CPU it even draws the
same masks). BN does not, so inside `stacked_batches(n)` it treats the first n examples and the
rest as two batches, each normalized with its own batch statistics; only the first (the main
network's) updates the running statistics.

The layers stay what they are (any `_BatchNorm` subclass, a fused norm-activation layer included):
two hooks run the layer's own forward on the first n examples, then again on the rest with its
running statistics untracked, and join the outputs. Modules, parameter names and state dicts are
unchanged.
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Iterator

import torch
from torch import nn

from loafing.errors import LoafingError

# Inside `stacked_batches`: the first segment's size, and the rest of each layer's input while it runs.
_STACKED: ContextVar[tuple[int, dict[int, torch.Tensor]] | None] = ContextVar("loafing_stacked", default=None)


@contextlib.contextmanager
def stacked_batches(first: int) -> Iterator[None]:
    """Inside: segment-aware layers treat the first `first` examples of a batch and the rest as two batches."""
    token = _STACKED.set((first, {}))
    try:
        yield
    finally:
        _STACKED.reset(token)


def _split(bn: nn.Module, inputs: tuple) -> tuple | None:
    """Forward pre-hook: in training inside `stacked_batches`, the layer's forward gets the first segment only."""
    stacked = _STACKED.get()
    if stacked is None or not bn.training:
        return None
    first, rests = stacked
    x = inputs[0]
    rests[id(bn)] = x[first:]
    return (x[:first], *inputs[1:])


def _join(bn: nn.Module, inputs: tuple, output: torch.Tensor | None) -> torch.Tensor | None:
    """Forward hook: the layer's forward on the rest, with its running statistics untracked, appended."""
    stacked = _STACKED.get()
    rest = None if stacked is None else stacked[1].pop(id(bn), None)
    if rest is None or output is None:  # not split, or the forward raised (this hook is always called)
        return None
    tracked = bn.track_running_stats
    bn.track_running_stats = False
    try:
        return torch.cat([output, bn.forward(rest)])
    finally:
        bn.track_running_stats = tracked


def is_segment_aware(m: nn.Module) -> bool:
    """Whether `m` treats the segments of a stacked batch as separate batches (see `make_segment_aware`)."""
    return _split in m._forward_pre_hooks.values()


def _mixes_batches(m: nn.Module) -> bool:
    """Whether a layer's output or state depends on the other examples of its batch."""
    if isinstance(m, nn.modules.instancenorm._InstanceNorm):
        return m.track_running_stats
    return isinstance(m, nn.modules.batchnorm._NormBase)


def make_segment_aware(module: nn.Module) -> nn.Module:
    """Make every BatchNorm layer of `module` (any `_BatchNorm` subclass) segment-aware; returns `module`.

    The layers keep their class, parameters and state-dict keys; calling this again changes nothing.
    A layer with running statistics that is no BatchNorm (InstanceNorm with tracked statistics) updates
    them even when untracked, so it would mix the two stacked batches without a word: it is refused.
    """
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if not is_segment_aware(m):
                m.register_forward_pre_hook(_split)
                m.register_forward_hook(_join, always_call=True)
        elif _mixes_batches(m):
            raise LoafingError(f"{type(m).__name__} layers with running statistics are not supported: the ST step "
                               "and the BN machinery handle BatchNorm layers (nn.BatchNorm2d or any subclass); "
                               "build the model with BatchNorm or with per-example norm layers")
    return module
