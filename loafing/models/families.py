"""The family table and the two libraries: which library networks the adapter stages, and how each library builds
a network and says what input it expects."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from loafing.models.families_timm import TIMM_FAMILIES
from loafing.models.families_torchvision import TORCHVISION_FAMILIES
from loafing.models.family_base import Family, Transitioned  # noqa: F401  (re-exported for the adapter)
from loafing.models.registry import IMAGENET_NORMALIZATION, Normalization

FAMILIES: tuple[Family, ...] = (*TIMM_FAMILIES, *TORCHVISION_FAMILIES)


@dataclass(frozen=True)
class Library:
    """A library of networks: its model names, its builder, and what it knows of a network's expected input."""

    name: str
    names: Callable[[], frozenset[str]]
    build: Callable[[str, int, dict[str, Any]], nn.Module]  # (name, num_classes, builder arguments) -> network
    normalization: Callable[[nn.Module], Normalization]
    default_size: Callable[[nn.Module], int]  # the input side it was designed for
    classifier_key: Callable[[nn.Module], str]  # state-dict key of the classifier weight


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


def _timm_classifier(net: nn.Module) -> str:
    classifier = _timm_cfg(net).get("classifier") or _last_linear(net)
    return f"{classifier[0] if isinstance(classifier, (tuple, list)) else classifier}.weight"


@functools.lru_cache(maxsize=None)
def _torchvision_names() -> frozenset[str]:
    import torchvision

    return frozenset(torchvision.models.list_models(module=torchvision.models))


def _torchvision_build(name: str, num_classes: int, args: dict[str, Any]) -> nn.Module:
    import torchvision

    return torchvision.models.get_model(name, num_classes=num_classes, **args)


def _last_linear(net: nn.Module) -> str:
    return [name for name, m in net.named_modules() if isinstance(m, nn.Linear)][-1]


LIBRARIES: dict[str, Library] = {
    "timm": Library("timm", _timm_names, _timm_build, _timm_normalization,
                    lambda net: int(_timm_cfg(net).get("input_size", (3, 224, 224))[-1]), _timm_classifier),
    "torchvision": Library("torchvision", _torchvision_names, _torchvision_build, lambda net: IMAGENET_NORMALIZATION,
                           lambda net: int(getattr(net, "image_size", 224)), lambda net: f"{_last_linear(net)}.weight"),
}


def family_of(library: str, net: nn.Module) -> Family | None:
    """The family of a network the library built, or None if the adapter cannot stage it."""
    return next((f for f in FAMILIES if f.library == library and f.matches(net)), None)
