"""What a family of library networks is to the staged view: one `Family` holds every fact about it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

Net = nn.Module


class Transitioned(nn.Module):
    """A stage's first block with the stage's transition (downsampling, patch merging) run before it: one step of
    a plan, never skippable, as a ResNet stage's downsampling first block. Not registered anywhere: the network
    keeps both modules where they are."""

    def __init__(self, transition: nn.Module, block: nn.Module) -> None:
        super().__init__()
        self.transition, self.block = transition, block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.transition(x))


def with_transition(transition: nn.Module, blocks: Sequence[nn.Module]) -> list[nn.Module]:
    """A stage's steps: its blocks, the first run after the transition (none when the transition is the identity)."""
    blocks = list(blocks)
    if isinstance(transition, nn.Identity) or not blocks:
        return blocks
    return [Transitioned(transition, blocks[0]), *blocks[1:]]


def split_at_fixed(blocks: Sequence[nn.Module], skippable: Callable[[nn.Module], bool]) -> list[list[nn.Module]]:
    """Stages of a flat block list: a block that cannot be skipped (it changes width or resolution) starts one."""
    stages: list[list[nn.Module]] = []
    for block in blocks:
        if not stages or not skippable(block):
            stages.append([])
        stages[-1].append(block)
    return stages


def children(*names: str) -> Callable[[Net], list[nn.Module]]:
    """The network's child modules of these names that it has (for stem and head modules)."""
    return lambda net: [getattr(net, n) for n in names if isinstance(getattr(net, n, None), nn.Module)]


def always(block: nn.Module) -> bool:
    """Every block of the family is skippable (pre-norm transformer blocks, ConvNeXt blocks)."""
    return True


def no_fixed_size(net: Net) -> int | None:
    """The network takes inputs of any size."""
    return None


@dataclass(frozen=True)
class Family:
    """A family of networks of one library, recognized by its network class, and how to stage it."""

    library: str  # "timm" or "torchvision"
    name: str  # short name: "vit", "convnext"
    classes: tuple[str, ...]  # qualified names of its network classes (a subclass is recognized too)
    patterns: tuple[str, ...]  # the library's model names of the family, as `loafing models` lists them
    description: str
    stages: Callable[[Net], list[list[nn.Module]]]  # the body's steps per stage (transitions joined, see above)
    skippable: Callable[[nn.Module], bool]  # whether a block adds an identity shortcut to a same-shaped output
    stem: Callable[[Net, torch.Tensor], torch.Tensor]  # normalized images -> the first block's input
    head: Callable[[Net, torch.Tensor], torch.Tensor]  # the last block's output -> logits
    stem_modules: Callable[[Net], list[nn.Module]]  # the modules the stem runs (their BN statistics)
    head_modules: Callable[[Net], list[nn.Module]]
    # A block's residual units in order (each adds its own output to its input): one "branch" for a
    # convolutional block, "attn" then "mlp" for a transformer block; for sub-layer views of the blocks.
    units: tuple[str, ...] = ("branch",)
    drop_path: str | None = None  # the builder's stochastic-depth argument, where the family has one
    # Whether a skippable block ends with its shortcut's addition (no activation after it): its residual branch is
    # then its output less its input, which stochastic depth and raw paths use. ResNets and RegNets add, then ReLU.
    adds_last: bool = False
    input_size: Callable[[Net], int | None] = field(default=no_fixed_size)  # a fixed input side, if the net has one

    def matches(self, net: Net) -> bool:
        """Whether `net` is (a subclass of) one of the family's network classes."""
        return any(f"{c.__module__}.{c.__qualname__}" in self.classes for c in type(net).__mro__)
