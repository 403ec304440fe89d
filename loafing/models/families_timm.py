"""timm's residual families, as the staged view reads them (learned from timm's own model files)."""
from __future__ import annotations

import torch
from torch import nn

from loafing.models.family_base import Family, Net, always, children, with_transition


def _strict_size(net: Net) -> int | None:
    """The input side a patch-embedding network was built for, if it insists on it."""
    embed = net.patch_embed
    if getattr(net, "dynamic_img_size", False) or not getattr(embed, "strict_img_size", False):
        return None
    return embed.img_size[0] if embed.img_size is not None else None


def _vit_stem(net: Net, x: torch.Tensor) -> torch.Tensor:
    return net.norm_pre(net.patch_drop(net._pos_embed(net.patch_embed(x))))


def _rest(net: Net, *taken: str) -> list[nn.Module]:
    """The network's children other than `taken` (stem and body): the head's modules."""
    return [m for n, m in net.named_children() if n not in taken]


def _stage_list(net: Net, names: tuple[str, ...]) -> list[list[nn.Module]]:
    return [list(getattr(net, n).children()) for n in names]


RESNET_LAYERS = ("layer1", "layer2", "layer3", "layer4")
REGNET_STAGES = ("s1", "s2", "s3", "s4")

TIMM_FAMILIES = (
    Family(
        "timm", "vit", ("timm.models.vision_transformer.VisionTransformer",), ("vit_*", "deit_*"),
        "Vision Transformer: one stage, every block skippable",
        stages=lambda net: [list(net.blocks)], skippable=always, stem=_vit_stem,
        head=lambda net, x: net.forward_head(net.norm(x)),
        stem_modules=children("patch_embed", "pos_drop", "patch_drop", "norm_pre"),
        head_modules=lambda net: _rest(net, "patch_embed", "pos_drop", "patch_drop", "norm_pre", "blocks"),
        units=("attn", "mlp"), drop_path="drop_path_rate", input_size=_strict_size, adds_last=True),
    Family(
        "timm", "convnext", ("timm.models.convnext.ConvNeXt",), ("convnext_*",),
        "ConvNeXt: a stage's downsampling runs with its first block",
        stages=lambda net: [with_transition(s.downsample, s.blocks) for s in net.stages],
        skippable=lambda b: isinstance(b.shortcut, nn.Identity), stem=lambda net, x: net.stem(x),
        head=lambda net, x: net.forward_head(net.norm_pre(x)), stem_modules=children("stem"),
        head_modules=lambda net: _rest(net, "stem", "stages"), drop_path="drop_path_rate",
        adds_last=True),
    Family(
        "timm", "resnet", ("timm.models.resnet.ResNet",), ("resnet*", "resnext*", "wide_resnet*"),
        "ResNet / ResNeXt: a block without a projection shortcut is skippable",
        stages=lambda net: _stage_list(net, RESNET_LAYERS), skippable=lambda b: b.downsample is None,
        stem=lambda net, x: net.maxpool(net.act1(net.bn1(net.conv1(x)))),
        head=lambda net, x: net.forward_head(x), stem_modules=children("conv1", "bn1", "act1", "maxpool"),
        head_modules=lambda net: _rest(net, "conv1", "bn1", "act1", "maxpool", *RESNET_LAYERS),
        drop_path="drop_path_rate"),
    Family(
        "timm", "regnet", ("timm.models.regnet.RegNet",), ("regnet*",),
        "RegNet: a block with an identity shortcut is skippable",
        stages=lambda net: _stage_list(net, REGNET_STAGES), skippable=lambda b: isinstance(b.downsample, nn.Identity),
        stem=lambda net, x: net.stem(x), head=lambda net, x: net.forward_head(net.final_conv(x)),
        stem_modules=children("stem"), head_modules=lambda net: _rest(net, "stem", *REGNET_STAGES),
        drop_path="drop_path_rate"),
    Family(
        "timm", "efficientnet", ("timm.models.efficientnet.EfficientNet",), ("efficientnet_*", "tf_efficientnet*"),
        "EfficientNet: a block is skippable when it has its skip connection",
        stages=lambda net: [list(s) for s in net.blocks],
        skippable=lambda b: getattr(b, "has_skip", False), stem=lambda net, x: net.bn1(net.conv_stem(x)),
        head=lambda net, x: net.forward_head(net.bn2(net.conv_head(x))), stem_modules=children("conv_stem", "bn1"),
        head_modules=lambda net: _rest(net, "conv_stem", "bn1", "blocks"), drop_path="drop_path_rate",
        adds_last=True),
    Family(
        "timm", "mobilenetv3", ("timm.models.mobilenetv3.MobileNetV3",), ("mobilenetv3_*", "tf_mobilenetv3*"),
        "MobileNetV3: a block is skippable when it has its skip connection",
        stages=lambda net: [list(s) for s in net.blocks],
        skippable=lambda b: getattr(b, "has_skip", False), stem=lambda net, x: net.bn1(net.conv_stem(x)),
        head=lambda net, x: net.forward_head(x), stem_modules=children("conv_stem", "bn1"),
        head_modules=lambda net: _rest(net, "conv_stem", "bn1", "blocks"), drop_path="drop_path_rate",
        adds_last=True),
    Family(
        "timm", "swin", ("timm.models.swin_transformer.SwinTransformer",), ("swin_*",),
        "Swin Transformer: blocks within a stage; patch merging runs with a stage's first block",
        stages=lambda net: [with_transition(s.downsample, s.blocks) for s in net.layers], skippable=always,
        stem=lambda net, x: net.patch_embed(x), head=lambda net, x: net.forward_head(net.norm(x)),
        stem_modules=children("patch_embed"), head_modules=lambda net: _rest(net, "patch_embed", "layers"),
        units=("attn", "mlp"), drop_path="drop_path_rate", input_size=_strict_size, adds_last=True),
)
