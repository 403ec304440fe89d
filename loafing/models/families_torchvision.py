"""torchvision's residual families, as the staged view reads them (learned from torchvision's own model files)."""
from __future__ import annotations

import torch
from torch import nn

from loafing.models.family_base import Family, Net, always, split_at_fixed, with_transition


def _vit_stem(net: Net, x: torch.Tensor) -> torch.Tensor:
    x = net._process_input(x)
    x = torch.cat([net.class_token.expand(x.shape[0], -1, -1), x], dim=1)
    return net.encoder.dropout(x + net.encoder.pos_embedding)


def _staged_features(net: Net) -> list[list[nn.Module]]:
    """features = [stem, stage, transition, stage, ...]: each stage after the first entered by its transition."""
    f = net.features
    return [list(f[1])] + [with_transition(f[i], f[i + 1]) for i in range(2, len(f) - 1, 2)]


def _pooled(net: Net, x: torch.Tensor, last: nn.Module | None = None) -> torch.Tensor:
    x = last(x) if last is not None else x
    return net.classifier(torch.flatten(net.avgpool(x), 1))


def _res_connect(block: nn.Module) -> bool:
    return bool(getattr(block, "use_res_connect", False))


RESNET_LAYERS = ("layer1", "layer2", "layer3", "layer4")

TORCHVISION_FAMILIES = (
    Family(
        "torchvision", "vit", ("torchvision.models.vision_transformer.VisionTransformer",), ("vit_*",),
        "Vision Transformer: one stage, every encoder block skippable",
        stages=lambda net: [list(net.encoder.layers)], skippable=always, stem=_vit_stem,
        head=lambda net, x: net.heads(net.encoder.ln(x)[:, 0]),
        stem_modules=lambda net: [net.conv_proj, net.encoder.dropout],
        head_modules=lambda net: [net.encoder.ln, net.heads], units=("attn", "mlp"),
        input_size=lambda net: net.image_size, adds_last=True),
    Family(
        "torchvision", "convnext", ("torchvision.models.convnext.ConvNeXt",), ("convnext_*",),
        "ConvNeXt: a stage's downsampling runs with its first block",
        stages=_staged_features, skippable=always, stem=lambda net, x: net.features[0](x),
        head=lambda net, x: net.classifier(net.avgpool(x)), stem_modules=lambda net: [net.features[0]],
        head_modules=lambda net: [net.avgpool, net.classifier], drop_path="stochastic_depth_prob",
        adds_last=True),
    Family(
        "torchvision", "resnet", ("torchvision.models.resnet.ResNet",),
        ("resnet*", "wide_resnet*", "resnext*"), "ResNet / Wide ResNet / ResNeXt: a block without a projection "
        "shortcut is skippable",
        stages=lambda net: [list(getattr(net, n)) for n in RESNET_LAYERS], skippable=lambda b: b.downsample is None,
        stem=lambda net, x: net.maxpool(net.relu(net.bn1(net.conv1(x)))),
        head=lambda net, x: net.fc(torch.flatten(net.avgpool(x), 1)),
        stem_modules=lambda net: [net.conv1, net.bn1], head_modules=lambda net: [net.fc]),
    Family(
        "torchvision", "regnet", ("torchvision.models.regnet.RegNet",), ("regnet_*",),
        "RegNet: a block without a projection shortcut is skippable",
        stages=lambda net: [list(stage) for stage in net.trunk_output], skippable=lambda b: b.proj is None,
        stem=lambda net, x: net.stem(x), head=lambda net, x: net.fc(torch.flatten(net.avgpool(x), 1)),
        stem_modules=lambda net: [net.stem], head_modules=lambda net: [net.fc]),
    Family(
        "torchvision", "efficientnet", ("torchvision.models.efficientnet.EfficientNet",), ("efficientnet_*",),
        "EfficientNet (v1, v2): a block is skippable when it has its skip connection",
        stages=lambda net: [list(stage) for stage in net.features[1:-1]], skippable=_res_connect,
        stem=lambda net, x: net.features[0](x), head=lambda net, x: _pooled(net, x, net.features[-1]),
        stem_modules=lambda net: [net.features[0]], head_modules=lambda net: [net.features[-1], net.classifier],
        drop_path="stochastic_depth_prob", adds_last=True),
    Family(
        "torchvision", "mobilenetv3", ("torchvision.models.mobilenetv3.MobileNetV3",), ("mobilenet_v3_*",),
        "MobileNetV3: a block is skippable when it has its skip connection; a block without one starts a stage",
        stages=lambda net: split_at_fixed(list(net.features[1:-1]), _res_connect), skippable=_res_connect,
        stem=lambda net, x: net.features[0](x), head=lambda net, x: _pooled(net, x, net.features[-1]),
        stem_modules=lambda net: [net.features[0]], head_modules=lambda net: [net.features[-1], net.classifier],
        adds_last=True),
    Family(
        "torchvision", "swin", ("torchvision.models.swin_transformer.SwinTransformer",), ("swin_*",),
        "Swin Transformer (v1, v2): blocks within a stage; patch merging runs with a stage's first block",
        stages=_staged_features, skippable=always, stem=lambda net, x: net.features[0](x),
        head=lambda net, x: net.head(net.flatten(net.avgpool(net.permute(net.norm(x))))),
        stem_modules=lambda net: [net.features[0]], head_modules=lambda net: [net.norm, net.head],
        units=("attn", "mlp"), drop_path="stochastic_depth_prob", adds_last=True),
)
