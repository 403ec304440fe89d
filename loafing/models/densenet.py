"""torchvision's DenseNets with the staged view: the dense layers of each dense block are its blocks.

A dense layer appends its features to everything before it, so a later layer's weights expect every
earlier layer's channels, in order: a sub-network can only keep a prefix of each dense block (the
layout is `prefix_only`; there is nothing to delete from the middle or to permute). What follows a
shortened dense block (the next transition's BN and 1x1 convolution, the final BN and the classifier)
sees only the channels that exist: the BN runs on the input zero-padded to its full width (same module,
so recalibration and the plan tree work unchanged) and the convolution and classifier use the first
input channels of their weights (slices of the same parameters, no copies). A DenseNet-121 inside a
DenseNet-169 is the plan keeping the first (6, 12, 24, 16) layers of its dense blocks.
"""
from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from loafing.models.registry import IMAGENET_NORMALIZATION, ModelSpec, body_layout, register_model
from loafing.models.staged import StagedModel

# Layers per dense block (Huang et al.; torchvision's configurations and DenseNet-264's).
BLOCK_CONFIGS = {121: (6, 12, 24, 16), 169: (6, 12, 32, 32), 201: (6, 12, 48, 32), 264: (6, 12, 64, 48)}
GROWTH_RATE = 32  # times --width-mult; the stem has twice the growth rate's channels, as torchvision's
_OLD_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def rename_old_keys(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Old torchvision DenseNet files name a dense layer's modules 'norm.1', 'conv.2'; today they are 'norm1'."""
    renamed = {}
    for key, value in state_dict.items():
        match = _OLD_KEY.match(key)
        renamed[match.group(1) + match.group(2) if match else key] = value
    return renamed


def normalize_prefix(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """ReLU(BN(x)) for x holding the first channels of the BN's input: zero-padded to the BN's width, run, cut."""
    channels = x.shape[1]
    if channels < bn.num_features:
        x = F.pad(x, (0, 0, 0, 0, 0, bn.num_features - channels))
    return F.relu(bn(x))[:, :channels]


class DenseStep(nn.Module):
    """One dense layer as a block: its input with the layer's new features appended; the first layer of every
    dense block but the first runs the transition before it (on whatever channels the previous block left)."""

    def __init__(self, layer: nn.Module, transition: nn.Module | None) -> None:
        super().__init__()
        self.layer, self.transition = layer, transition

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.transition is not None:
            t = self.transition
            h = normalize_prefix(t.norm, x)
            x = t.pool(F.conv2d(h, t.conv.weight[:, :h.shape[1]]))
        return torch.cat([x, self.layer(x)], 1)


class StagedDenseNet(StagedModel):
    """torchvision DenseNet; stem conv0..pool0, one stage per dense block, head norm5 + ReLU + pooling + linear."""

    def __init__(self, depth: int, num_classes: int, width_mult: float = 1.0, small_images: bool = False) -> None:
        import torchvision  # here: `loafing models` lists the specs without loading torchvision

        growth = max(1, round(GROWTH_RATE * width_mult))
        net = torchvision.models.DenseNet(growth, BLOCK_CONFIGS[depth], 2 * growth, num_classes=num_classes)
        if small_images:  # 32x32 inputs: a 3x3 stride-1 stem without max-pooling, as CIFAR ResNets have
            net.features.conv0 = nn.Conv2d(3, 2 * growth, 3, 1, 1, bias=False)
            nn.init.kaiming_normal_(net.features.conv0.weight)
            net.features.pool0 = nn.Identity()
        blocks, sizes = [], []
        for i, n in enumerate(BLOCK_CONFIGS[depth], start=1):
            layers = list(getattr(net.features, f"denseblock{i}").values())
            transition = getattr(net.features, f"transition{i - 1}") if i > 1 else None
            blocks += [DenseStep(layer, transition if j == 0 else None) for j, layer in enumerate(layers)]
            sizes.append(n)
        skippable = [j > 0 for n in sizes for j in range(n)]
        super().__init__(net, blocks, sizes, skippable, prefix_only=True)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        f = self.net.features
        return f.pool0(f.relu0(f.norm0(f.conv0(x))))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        h = normalize_prefix(self.net.features.norm5, x)
        pooled = torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)
        return F.linear(pooled, self.net.classifier.weight[:, :h.shape[1]], self.net.classifier.bias)

    def stem_modules(self) -> list[nn.Module]:
        return [self.net.features.conv0, self.net.features.norm0]

    def head_modules(self) -> list[nn.Module]:
        return [self.net.features.norm5, self.net.classifier]


def densenet_name(depths: tuple[int, ...]) -> str | None:
    """'DenseNet-121' for depths (6, 12, 24, 16): the DenseNet a prefix plan is, if it is one."""
    names = {config: f"DenseNet-{depth}" for depth, config in BLOCK_CONFIGS.items()}
    return names.get(tuple(depths))


def densenet_layout(depth: int):
    """A DenseNet's body: its dense layers per dense block, each block's first layer fixed, prefixes only."""
    sizes = BLOCK_CONFIGS[depth]
    return body_layout(sizes, fixed=[sum(sizes[:i]) + 1 for i in range(len(sizes))], prefix_only=True)


for _depth in BLOCK_CONFIGS:
    register_model(ModelSpec(
        name=f"densenet{_depth}",
        build=lambda num_classes, width_mult, depth=_depth: StagedDenseNet(depth, num_classes, width_mult),
        description=f"torchvision DenseNet-{_depth} (dense blocks {BLOCK_CONFIGS[_depth]}, growth 32 x width)",
        recipe="imagenet", classifier_key="classifier.weight", normalization=IMAGENET_NORMALIZATION,
        width_mult=True, architecture_name=densenet_name, rename_keys=rename_old_keys, min_image_size=32,
        declared_layout=densenet_layout(_depth)))
    register_model(ModelSpec(
        name=f"densenet{_depth}-cifar",
        build=lambda num_classes, width_mult, depth=_depth: StagedDenseNet(depth, num_classes, width_mult,
                                                                          small_images=True),
        description=f"DenseNet-{_depth} for 32x32 images: 3x3 stride-1 stem, no max-pooling",
        recipe="cifar", classifier_key="classifier.weight", normalization=IMAGENET_NORMALIZATION,
        width_mult=True, architecture_name=densenet_name, rename_keys=rename_old_keys, min_image_size=8,
        declared_layout=densenet_layout(_depth)))
