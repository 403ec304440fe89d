"""The unit view (`--granularity unit`): each transformer block split into its residual units, attention then MLP,
each one step of a plan, so that plans can drop or reorder attention layers and MLPs one by one.

A unit computes `x + branch(x)` exactly as its block's own forward computes that half, with the block's own
submodules. Units, like `Transitioned`, are registered nowhere: the network keeps its modules where they are, so a
checkpoint of the block view loads in the unit view and the other way round. How each block class splits is
declared once here (`SPLITS`); which families have units is their `Family.units`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from loafing.errors import LoafingError
from loafing.models.families import FAMILIES
from loafing.models.family_base import Family, Transitioned

Run = Callable[[nn.Module, torch.Tensor], torch.Tensor]  # (the block, the unit's input) -> the unit's output


class Unit(nn.Module):
    """One residual unit of a block, run by its block's submodules; its children are the submodules it runs (so its
    parameters are its own), the block itself is only referred to."""

    def __init__(self, block: nn.Module, name: str, parts: Sequence[str], run: Run) -> None:
        super().__init__()
        self.name = name
        self._block, self._run = (block,), run  # a tuple keeps the block out of this module's children
        for part in parts:
            self.add_module(part, getattr(block, part))

    @property
    def block(self) -> nn.Module:
        """The block this unit is half of."""
        return self._block[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(self.block, x)

    def extra_repr(self) -> str:
        return f"{type(self.block).__name__}.{self.name}"


@dataclass(frozen=True)
class UnitSpec:
    """One unit of a block class: its name (as `Family.units` names it), the block's submodules it runs, and how."""

    name: str
    parts: tuple[str, ...]
    run: Run


def _timm_vit_attn(b: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x + b.drop_path1(b.ls1(b.attn(b.norm1(x))))


def _timm_vit_mlp(b: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x + b.drop_path2(b.ls2(b.mlp(b.norm2(x))))


def _timm_post_attn(b: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x + b.drop_path1(b.norm1(b.attn(x)))


def _timm_post_mlp(b: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x + b.drop_path2(b.norm2(b.mlp(x)))


def _timm_swin_attn(b: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x + b.drop_path1(b._attn(b.norm1(x)))  # _attn: shift, pad, window attention, unpad, shift back


def _timm_swin_mlp(b: nn.Module, x: torch.Tensor) -> torch.Tensor:
    n, h, w, c = x.shape  # the block runs its MLP on the tokens flattened, as here
    x = x.reshape(n, -1, c)
    return (x + b.drop_path2(b.mlp(b.norm2(x)))).reshape(n, h, w, c)


def _tv_vit_attn(b: nn.Module, x: torch.Tensor) -> torch.Tensor:
    h = b.ln_1(x)
    h, _ = b.self_attention(h, h, h, need_weights=False)
    return b.dropout(h) + x


def _tv_vit_mlp(b: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x + b.mlp(b.ln_2(x))


def _tv_swin_attn(b: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x + b.stochastic_depth(b.attn(b.norm1(x)))


def _tv_swin_mlp(b: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x + b.stochastic_depth(b.mlp(b.norm2(x)))


def _tv_swin2_attn(b: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x + b.stochastic_depth(b.norm1(b.attn(x)))


def _tv_swin2_mlp(b: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x + b.stochastic_depth(b.norm2(b.mlp(x)))


# Block class (qualified name) -> its units in order, learned from each library's own forward of that class.
SPLITS: dict[str, tuple[UnitSpec, ...]] = {
    "timm.models.vision_transformer.Block": (
        UnitSpec("attn", ("norm1", "attn", "ls1", "drop_path1"), _timm_vit_attn),
        UnitSpec("mlp", ("norm2", "mlp", "ls2", "drop_path2"), _timm_vit_mlp)),
    "timm.models.vision_transformer.ResPostBlock": (
        UnitSpec("attn", ("attn", "norm1", "drop_path1"), _timm_post_attn),
        UnitSpec("mlp", ("mlp", "norm2", "drop_path2"), _timm_post_mlp)),
    "timm.models.swin_transformer.SwinTransformerBlock": (
        UnitSpec("attn", ("norm1", "attn", "drop_path1"), _timm_swin_attn),
        UnitSpec("mlp", ("norm2", "mlp", "drop_path2"), _timm_swin_mlp)),
    "torchvision.models.vision_transformer.EncoderBlock": (
        UnitSpec("attn", ("ln_1", "self_attention", "dropout"), _tv_vit_attn),
        UnitSpec("mlp", ("ln_2", "mlp"), _tv_vit_mlp)),
    "torchvision.models.swin_transformer.SwinTransformerBlock": (
        UnitSpec("attn", ("norm1", "attn", "stochastic_depth"), _tv_swin_attn),
        UnitSpec("mlp", ("norm2", "mlp", "stochastic_depth"), _tv_swin_mlp)),
    "torchvision.models.swin_transformer.SwinTransformerBlockV2": (
        UnitSpec("attn", ("attn", "norm1", "stochastic_depth"), _tv_swin2_attn),
        UnitSpec("mlp", ("mlp", "norm2", "stochastic_depth"), _tv_swin2_mlp)),
}


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def split_block(block: nn.Module) -> list[Unit]:
    """The residual units of `block`, in order; a one-line LoafingError for a block class whose units are not known
    (one that runs attention and MLP in parallel, or a subclass with a forward of its own)."""
    for cls in type(block).__mro__:
        specs = SPLITS.get(_qualified(cls))
        if specs is not None and type(block).forward is cls.forward:
            return [Unit(block, spec.name, spec.parts, spec.run) for spec in specs]
        if specs is not None:
            break
    known = ", ".join(f"{name.partition('.')[0]}'s {name.rpartition('.')[2]}" for name in SPLITS)
    raise LoafingError(f"the unit view cannot split a {type(block).__name__} block into sequential attention and MLP "
                       f"units; it splits: {known}")


def families_with_units() -> list[str]:
    """The families whose blocks have more than one residual unit, as `library:name`."""
    return [f"{f.library}:{f.name}" for f in FAMILIES if len(f.units) > 1]


def no_units(what: str) -> LoafingError:
    """The error for a model asked for the unit view whose blocks are one residual unit each."""
    return LoafingError(f"--granularity unit splits transformer blocks into their attention and MLP units, but {what} "
                        f"has one residual unit per block; families with units: {', '.join(families_with_units())} "
                        "(valid choices for this model: --granularity block)")


def unit_stages(stages: Sequence[Sequence[nn.Module]], family: Family) -> tuple[list[list[nn.Module]], list[bool]]:
    """The block view's stages as units, and whether each unit is skippable: a stage's transition runs with its first
    block's first unit, which is then not skippable, as a `Transitioned` block is not; the other units of a
    skippable block are skippable."""
    steps: list[list[nn.Module]] = []
    skippable: list[bool] = []
    for stage in stages:
        steps.append([])
        for block in stage:
            if isinstance(block, Transitioned):
                units = split_block(block.block)
                steps[-1] += [Transitioned(block.transition, units[0]), *units[1:]]
                skippable += [False] + [family.skippable(block.block)] * (len(units) - 1)
            else:
                units = split_block(block)
                steps[-1] += units
                skippable += [family.skippable(block)] * len(units)
    return steps, skippable
