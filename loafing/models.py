"""Model registry and the staged view of each network: stem -> stages of blocks -> head, run by a plan."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from loafing.bn import frozen_bn_stats
from loafing.conv import crop_conv_kernels
from loafing.errors import LoafingError
from loafing.plans import Layout, Plan, validate_plan
from loafing.segments import make_segment_aware, stacked_batches

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class StagedModel(nn.Module):
    """A residual network seen as stem, body blocks and head; `model(x, plan)` runs the plan's blocks.

    The wrapped network lives in `self.net` with its original parameter names, so foreign state
    dicts (torchvision, akamaster CIFAR ResNets) load into `model.net` unchanged.
    """

    def __init__(self, net: nn.Module, blocks: Sequence[nn.Module], stage_sizes: Sequence[int],
                 skippable: Sequence[bool], mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.net = make_segment_aware(crop_conv_kernels(net))
        # A plain tuple keeps the blocks out of the state dict: they are already registered under `net`.
        self._blocks = tuple(blocks)
        stages, start = [], 1
        for n in stage_sizes:
            stages.append(tuple(range(start, start + n)))
            start += n
        self.layout = Layout(tuple(stages), frozenset(i + 1 for i, s in enumerate(skippable) if s))
        self.register_buffer("input_mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self._valid_plans: set[Plan] = {self.layout.main_plan}

    def block(self, index: int) -> nn.Module:
        """The body block with 1-based global index `index`."""
        return self._blocks[index - 1]

    def set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Set the per-channel input normalization the weights expect (inputs arrive in [0, 1])."""
        self.input_mean.copy_(torch.tensor(mean).view(1, -1, 1, 1))
        self.input_std.copy_(torch.tensor(std).view(1, -1, 1, 1))

    @property
    def normalization(self) -> dict[str, list[float]]:
        """The input normalization as plain lists, for checkpoints."""
        return {"mean": self.input_mean.flatten().tolist(), "std": self.input_std.flatten().tolist()}

    def check_plan(self, plan: Plan) -> None:
        """Raise LoafingError if `plan` is not valid for this model."""
        if plan not in self._valid_plans:
            validate_plan(plan, self.layout)
            self._valid_plans.add(plan)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize the input and run the stem."""
        return self.forward_stem((x - self.input_mean) / self.input_std)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """The stem on a normalized input."""
        raise NotImplementedError

    def stem_modules(self) -> list[nn.Module]:
        """The modules the stem runs (for per-prefix BN statistics)."""
        raise NotImplementedError

    def head_modules(self) -> list[nn.Module]:
        """The modules the head runs (for per-prefix BN statistics)."""
        raise NotImplementedError

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Features after the last stage -> logits."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, plan: Plan | None = None) -> torch.Tensor:
        """Logits of the network that runs `plan` (the main network if None)."""
        plan = plan or self.layout.main_plan
        self.check_plan(plan)
        x = self.stem(x)
        for b in plan.sequence():
            x = self._blocks[b - 1](x)
        return self.head(x)

    def forward_with_subnetwork(self, x: torch.Tensor, plan: Plan) -> tuple[torch.Tensor, torch.Tensor]:
        """Main and `plan` logits in one graph, the same as two separate forwards in train mode.

        Blocks on the common prefix run once. After that, every block both networks run (for an
        ordered sub-network: all of its remaining blocks, and the head) runs once on the two
        batches stacked, each half normalized by BN with its own batch statistics. Only the main
        network updates running statistics.
        """
        self.check_plan(plan)
        sub_seq = plan.sequence()
        n = x.shape[0]
        main = sub = self.stem(x)
        stacked = None  # torch.cat([main, sub]) while consecutive blocks run on both
        i = 0  # position of the sub-network's next block
        for b in self.layout.main_plan.sequence():
            block = self._blocks[b - 1]
            if i < len(sub_seq) and sub_seq[i] == b:
                i += 1
                if main is sub:
                    main = sub = block(main)
                    continue
                with stacked_batches(n):
                    stacked = block(torch.cat([main, sub]) if stacked is None else stacked)
                main, sub = stacked[:n], stacked[n:]
            else:
                main, stacked = block(main), None
        with frozen_bn_stats(self):  # blocks of a plan that reorders the main network's
            for b in sub_seq[i:]:
                sub, stacked = self._blocks[b - 1](sub), None
        # The head always runs stacked, even on one shared input, so each half gets its own dropout mask.
        with stacked_batches(n):
            logits = self.head(torch.cat([main, sub]) if stacked is None else stacked)
        return logits[:n], logits[n:]


# ---------------------------------------------------------------- CIFAR ResNets (He et al., option A)


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


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
        super().__init__(net, blocks, (n, n, n), [b.skippable for b in blocks], IMAGENET_MEAN, IMAGENET_STD)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.net.bn1(self.net.conv1(x)))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def stem_modules(self) -> list[nn.Module]:
        return [self.net.conv1, self.net.bn1]

    def head_modules(self) -> list[nn.Module]:
        return [self.net.linear]


# ---------------------------------------------------------------- torchvision models


class StagedMobileNetV3(StagedModel):
    """torchvision MobileNetV3-Large; body = paper Table r1 layers 1-14 = features[2..15]."""

    STAGE_SIZES = (2, 3, 4, 2, 3)

    def __init__(self, num_classes: int, width_mult: float = 1.0) -> None:
        net = torchvision.models.mobilenet_v3_large(num_classes=num_classes, width_mult=width_mult)
        blocks = list(net.features[2:16])
        super().__init__(net, blocks, self.STAGE_SIZES, [b.use_res_connect for b in blocks],
                         IMAGENET_MEAN, IMAGENET_STD)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features[1](self.net.features[0](x))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        x = self.net.avgpool(self.net.features[16](x))
        return self.net.classifier(torch.flatten(x, 1))

    def stem_modules(self) -> list[nn.Module]:
        return [self.net.features[0], self.net.features[1]]

    def head_modules(self) -> list[nn.Module]:
        return [self.net.features[16], self.net.classifier]


class StagedTorchvisionResNet(StagedModel):
    """torchvision bottleneck ResNet; stem conv1..maxpool, stages layer1..layer4, head avgpool + fc."""

    def __init__(self, net: torchvision.models.ResNet) -> None:
        layers = (net.layer1, net.layer2, net.layer3, net.layer4)
        blocks = [b for layer in layers for b in layer]
        super().__init__(net, blocks, [len(layer) for layer in layers],
                         [b.downsample is None for b in blocks], IMAGENET_MEAN, IMAGENET_STD)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        return n.maxpool(n.relu(n.bn1(n.conv1(x))))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.fc(torch.flatten(self.net.avgpool(x), 1))

    def stem_modules(self) -> list[nn.Module]:
        return [self.net.conv1, self.net.bn1]

    def head_modules(self) -> list[nn.Module]:
        return [self.net.fc]


# ---------------------------------------------------------------- registry

MODELS: dict[str, Callable[..., StagedModel]] = {}


def register_model(name: str) -> Callable[[Callable[..., StagedModel]], Callable[..., StagedModel]]:
    """Decorator adding a builder `(num_classes, width_mult) -> StagedModel` to the registry."""

    def add(builder: Callable[..., StagedModel]) -> Callable[..., StagedModel]:
        MODELS[name] = builder
        return builder

    return add


def _register_cifar_resnet(depth: int) -> None:
    @register_model(f"resnet{depth}-cifar")
    def build(num_classes: int, width_mult: float = 1.0) -> StagedModel:
        return StagedCifarResNet((depth - 2) // 6, num_classes)


for _depth in (20, 32, 44, 56, 110):
    _register_cifar_resnet(_depth)


@register_model("mobilenet_v3_large")
def build_mobilenet_v3_large(num_classes: int, width_mult: float = 1.0) -> StagedModel:
    """MobileNetV3-Large at the given width multiplier."""
    return StagedMobileNetV3(num_classes, width_mult)


@register_model("resnet50")
def build_resnet50(num_classes: int, width_mult: float = 1.0) -> StagedModel:
    """torchvision ResNet-50 (stages 3-4-6-3)."""
    return StagedTorchvisionResNet(torchvision.models.resnet50(num_classes=num_classes))


@register_model("resnet101")
def build_resnet101(num_classes: int, width_mult: float = 1.0) -> StagedModel:
    """torchvision ResNet-101 (stages 3-4-23-3)."""
    return StagedTorchvisionResNet(torchvision.models.resnet101(num_classes=num_classes))


WIDTH_MULT_MODELS = {"mobilenet_v3_large"}


def create_model(name: str, num_classes: int, width_mult: float = 1.0) -> StagedModel:
    """Build a registered model; unknown names and unsupported width multipliers are rejected."""
    if name not in MODELS:
        raise LoafingError(f"unknown model {name!r}; valid choices: {', '.join(MODELS)}")
    if width_mult != 1.0 and name not in WIDTH_MULT_MODELS:
        raise LoafingError(f"--width-mult is only supported by: {', '.join(sorted(WIDTH_MULT_MODELS))}")
    if width_mult <= 0:
        raise LoafingError(f"--width-mult must be positive, got {width_mult}")
    return MODELS[name](num_classes, width_mult)
