"""The CIFAR ResNets of He et al. (6n+2 layers, option-A shortcuts), with akamaster's parameter names."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from loafing.models.registry import IMAGENET_NORMALIZATION, ModelSpec, body_layout, register_model
from loafing.models.staged import StagedModel


class PadShortcut(nn.Module):
    """Option-A shortcut: stride-2 identity, zero-padded in channels; no parameters."""

    def __init__(self, extra_channels: int) -> None:
        super().__init__()
        self.extra = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class CifarBasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or option-A) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.skippable = stride == 1 and in_planes == planes
        self.shortcut = nn.Identity() if self.skippable else PadShortcut(planes - in_planes)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch, before the addition."""
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.branch(x) + self.shortcut(x))


class CifarResNet(nn.Module):
    """The 6n+2 CIFAR ResNet; parameter names match akamaster/pytorch_resnet_cifar10."""

    def __init__(self, n: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        for i, planes in enumerate((16, 32, 64), start=1):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 1 and j == 0) else 1
                blocks.append(CifarBasicBlock(in_planes, planes, stride))
                in_planes = planes
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class StagedCifarResNet(StagedModel):
    """CIFAR ResNet with the staged view: stem conv1/bn1, three stages of n blocks, pooling + linear head."""

    def __init__(self, n: int, num_classes: int) -> None:
        net = CifarResNet(n, num_classes)
        blocks = [b for layer in (net.layer1, net.layer2, net.layer3) for b in layer]
        super().__init__(net, blocks, (n, n, n), [b.skippable for b in blocks])

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.net.bn1(self.net.conv1(x)))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def stem_modules(self) -> list[nn.Module]:
        return [self.net.conv1, self.net.bn1]

    def head_modules(self) -> list[nn.Module]:
        return [self.net.linear]

    def residual(self, index: int, x: torch.Tensor, branch: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 shortcut: bool = True) -> torch.Tensor:
        block = self.block(index)
        out = block.branch(x)
        out = branch(out) if branch is not None else out
        return F.relu(out + block.shortcut(x) if shortcut else out)


def cifar_resnet_name(depths: tuple[int, ...]) -> str | None:
    """'ResNet20' for depths (3, 3, 3): the CIFAR ResNet that a uniform plan is."""
    return f"ResNet{6 * depths[0] + 2}" if len(set(depths)) == 1 else None


def cifar_resnet_spec(depth: int) -> ModelSpec:
    """The spec of the 6n+2 CIFAR ResNet of the given depth."""
    return ModelSpec(
        name=f"resnet{depth}-cifar", build=lambda num_classes, width_mult: StagedCifarResNet((depth - 2) // 6,
                                                                                           num_classes),
        description=f"He et al.'s ResNet-{depth} for CIFAR, option-A shortcuts, akamaster parameter names",
        recipe="cifar", classifier_key="linear.weight", normalization=IMAGENET_NORMALIZATION,
        architecture_name=cifar_resnet_name, declared_layout=cifar_resnet_layout(depth))


def cifar_resnet_layout(depth: int):
    """A 6n+2 CIFAR ResNet's body: three stages of n blocks; the first block of stages 2 and 3 downsamples."""
    n = (depth - 2) // 6
    return body_layout((n, n, n), fixed=(n + 1, 2 * n + 1))


for _depth in (20, 32, 44, 56, 110):
    register_model(cifar_resnet_spec(_depth))
