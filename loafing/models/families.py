"""The family table and the two libraries: which library networks the adapter stages, and how each library builds
a network, says what input it expects, and names, describes and loads its own pretrained weights."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from loafing.models.families_timm import TIMM_FAMILIES
from loafing.models.families_torchvision import TORCHVISION_FAMILIES
from loafing.models.family_base import Family, Transitioned  # noqa: F401  (re-exported for the adapter)
from loafing.models.registry import IMAGENET_NORMALIZATION, Normalization

FAMILIES: tuple[Family, ...] = (*TIMM_FAMILIES, *TORCHVISION_FAMILIES)


PRETRAINED = "pretrained"  # --weights: the library's default weights of a network


@dataclass(frozen=True)
class WeightsFacts:
    """What a library says of one set of its pretrained weights: its full name, its classes and the input it expects."""

    name: str  # the library's own name: "convnext_atto.d2_in1k", "ResNet18_Weights.IMAGENET1K_V1"
    num_classes: int
    normalization: Normalization
    image_size: int  # the side of the (center-cropped) images
    resize: int  # the side evaluation resizes to before cropping image_size
    interpolation: str  # of that resize: "bilinear", "bicubic" (most of timm's weights)


@dataclass(frozen=True)
class Library:
    """A library of networks: its model names, its builder, what it knows of a network's expected input, and its
    pretrained weights (named, described and loaded by the library's own code, downloads cached where it caches)."""

    name: str
    names: Callable[[], frozenset[str]]
    build: Callable[[str, int, dict[str, Any]], nn.Module]  # (name, num_classes, builder arguments) -> network
    normalization: Callable[[nn.Module], Normalization]
    default_size: Callable[[nn.Module], int]  # the input side it was designed for
    classifiers: Callable[[nn.Module], tuple[str, ...]]  # the classifier modules' names
    weight_names: Callable[[str], tuple[str, ...]]  # a network's named weights (besides "pretrained")
    weights_facts: Callable[[str, str], WeightsFacts | None]  # (name, weights name) -> facts; None: no such weights
    pretrained: Callable[[str, str, dict[str, Any]], nn.Module]  # (name, weights name, arguments) -> loaded network

    def classifier_key(self, net: nn.Module) -> str:
        """State-dict key of the (first) classifier's weight: a foreign state dict's class count."""
        return f"{self.classifiers(net)[0]}.weight"


@functools.lru_cache(maxsize=None)
def _timm_names() -> frozenset[str]:
    import timm

    return frozenset(timm.list_models())


def _timm_build(name: str, num_classes: int, args: dict[str, Any]) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=False, num_classes=num_classes, **args)


def _timm_cfg(net: nn.Module) -> dict[str, Any]:
    cfg = getattr(net, "pretrained_cfg", None) or {}
    return cfg if isinstance(cfg, dict) else cfg.to_dict()


def _timm_normalization(net: nn.Module) -> Normalization:
    cfg = _timm_cfg(net)
    if "mean" in cfg and "std" in cfg:
        return tuple(cfg["mean"]), tuple(cfg["std"])
    return IMAGENET_NORMALIZATION


def _timm_classifiers(net: nn.Module) -> tuple[str, ...]:
    classifier = _timm_cfg(net).get("classifier") or _last_linear(net)
    return tuple(classifier) if isinstance(classifier, (tuple, list)) else (classifier,)


def _timm_weight_names(name: str) -> tuple[str, ...]:
    import timm

    return tuple(full.partition(".")[2] for full in timm.list_pretrained(f"{name}.*"))


def _timm_weights_facts(name: str, weights: str) -> WeightsFacts | None:
    from timm.models import get_pretrained_cfg

    if weights not in (PRETRAINED, *_timm_weight_names(name)):
        return None
    cfg = get_pretrained_cfg(name if weights == PRETRAINED else f"{name}.{weights}")
    if cfg is None or cfg.tag not in _timm_weight_names(name):  # the default tag may have no weights to download
        return None
    size = int(cfg.input_size[-1])
    return WeightsFacts(f"{name}.{cfg.tag}", int(cfg.num_classes), (tuple(cfg.mean), tuple(cfg.std)), size,
                        math.floor(size / cfg.crop_pct), cfg.interpolation)  # timm's own evaluation resize


def _timm_pretrained(name: str, weights: str, args: dict[str, Any]) -> nn.Module:
    import timm

    return timm.create_model(_timm_weights_facts(name, weights).name, pretrained=True, **args)


@functools.lru_cache(maxsize=None)
def _torchvision_names() -> frozenset[str]:
    import torchvision

    return frozenset(torchvision.models.list_models(module=torchvision.models))


def _torchvision_build(name: str, num_classes: int, args: dict[str, Any]) -> nn.Module:
    import torchvision

    return torchvision.models.get_model(name, num_classes=num_classes, **args)


def _torchvision_weights(name: str, weights: str) -> Any:
    """The weights enum member `weights` names ("pretrained": the library's DEFAULT), or None."""
    import torchvision

    members = torchvision.models.get_model_weights(name).__members__
    return members.get("DEFAULT" if weights == PRETRAINED else weights)


def _torchvision_weight_names(name: str) -> tuple[str, ...]:
    import torchvision

    return tuple(w.name for w in torchvision.models.get_model_weights(name))


def _torchvision_weights_facts(name: str, weights: str) -> WeightsFacts | None:
    member = _torchvision_weights(name, weights)
    if member is None:
        return None
    framing = member.transforms()
    return WeightsFacts(f"{type(member).__name__}.{member.name}", len(member.meta["categories"]),
                        (tuple(framing.mean), tuple(framing.std)), int(framing.crop_size[0]),
                        int(framing.resize_size[0]), framing.interpolation.value)


def _torchvision_pretrained(name: str, weights: str, args: dict[str, Any]) -> nn.Module:
    import torchvision

    return torchvision.models.get_model(name, weights=_torchvision_weights(name, weights), **args)


def _last_linear(net: nn.Module) -> str:
    return [name for name, m in net.named_modules() if isinstance(m, nn.Linear)][-1]


LIBRARIES: dict[str, Library] = {
    "timm": Library("timm", _timm_names, _timm_build, _timm_normalization,
                    lambda net: int(_timm_cfg(net).get("input_size", (3, 224, 224))[-1]), _timm_classifiers,
                    _timm_weight_names, _timm_weights_facts, _timm_pretrained),
    "torchvision": Library("torchvision", _torchvision_names, _torchvision_build, lambda net: IMAGENET_NORMALIZATION,
                           lambda net: int(getattr(net, "image_size", 224)), lambda net: (_last_linear(net),),
                           _torchvision_weight_names, _torchvision_weights_facts, _torchvision_pretrained),
}


def family_of(library: str, net: nn.Module) -> Family | None:
    """The family of a network the library built, or None if the adapter cannot stage it."""
    return next((f for f in FAMILIES if f.library == library and f.matches(net)), None)
