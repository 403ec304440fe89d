"""torchvision's MobileNetV3-Large and bottleneck ResNets, with the staged view."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from loafing.models.registry import IMAGENET_NORMALIZATION, ModelSpec, body_layout, register_model
from loafing.models.staged import StagedModel


class StagedMobileNetV3(StagedModel):
    """torchvision MobileNetV3-Large; body = paper Table r1 layers 1-14 = features[2..15]."""

    STAGE_SIZES = (2, 3, 4, 2, 3)

    def __init__(self, num_classes: int, width_mult: float = 1.0) -> None:
        import torchvision  # here: `loafing models` lists the specs without loading torchvision

        net = torchvision.models.mobilenet_v3_large(num_classes=num_classes, width_mult=width_mult)
        blocks = list(net.features[2:16])
        super().__init__(net, blocks, self.STAGE_SIZES, [b.use_res_connect for b in blocks])

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features[1](self.net.features[0](x))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        x = self.net.avgpool(self.net.features[16](x))
        return self.net.classifier(torch.flatten(x, 1))

    def stem_modules(self) -> list[nn.Module]:
        return [self.net.features[0], self.net.features[1]]

    def head_modules(self) -> list[nn.Module]:
        return [self.net.features[16], self.net.classifier]

    def residual(self, index: int, x: torch.Tensor, branch: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 shortcut: bool = True) -> torch.Tensor:
        out = self.block(index).block(x)  # InvertedResidual: no activation after the addition
        out = branch(out) if branch is not None else out
        return out + x if shortcut else out


class StagedTorchvisionResNet(StagedModel):
    """torchvision bottleneck ResNet; stem conv1..maxpool, stages layer1..layer4, head avgpool + fc."""

    def __init__(self, net: nn.Module) -> None:
        layers = (net.layer1, net.layer2, net.layer3, net.layer4)
        blocks = [b for layer in layers for b in layer]
        super().__init__(net, blocks, [len(layer) for layer in layers], [b.downsample is None for b in blocks])

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        return n.maxpool(n.relu(n.bn1(n.conv1(x))))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.fc(torch.flatten(self.net.avgpool(x), 1))

    def stem_modules(self) -> list[nn.Module]:
        return [self.net.conv1, self.net.bn1]

    def head_modules(self) -> list[nn.Module]:
        return [self.net.fc]

    def residual(self, index: int, x: torch.Tensor, branch: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 shortcut: bool = True) -> torch.Tensor:
        b = self.block(index)  # a skippable Bottleneck: no downsample, identity shortcut
        out = b.relu(b.bn1(b.conv1(x)))
        out = b.relu(b.bn2(b.conv2(out)))
        out = b.bn3(b.conv3(out))
        out = branch(out) if branch is not None else out
        return b.relu(out + x if shortcut else out)


def torchvision_resnet(name: str, num_classes: int) -> StagedTorchvisionResNet:
    """torchvision's bottleneck ResNet called `name`, staged."""
    import torchvision  # here: `loafing models` lists the specs without loading torchvision

    return StagedTorchvisionResNet(getattr(torchvision.models, name)(num_classes=num_classes))


register_model(ModelSpec(
    name="mobilenet_v3_large", build=StagedMobileNetV3,
    description="torchvision MobileNetV3-Large; body = the paper's Table r1 layers 1-14",
    recipe="imagenet", classifier_key="classifier.3.weight", normalization=IMAGENET_NORMALIZATION,
    width_mult=True, declared_layout=body_layout(StagedMobileNetV3.STAGE_SIZES, fixed=(1, 3, 6, 10, 12))))

# Bottleneck blocks per stage; a stage's first block downsamples (a projection shortcut), the others are skippable.
RESNET_STAGES = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}
for _name, _stages in RESNET_STAGES.items():
    register_model(ModelSpec(
        name=_name, build=lambda num_classes, width_mult, name=_name: torchvision_resnet(name, num_classes),
        description=f"torchvision {_name} (bottleneck blocks)", recipe="imagenet", classifier_key="fc.weight",
        normalization=IMAGENET_NORMALIZATION,
        declared_layout=body_layout(_stages, fixed=[sum(_stages[:i]) + 1 for i in range(len(_stages))])))
