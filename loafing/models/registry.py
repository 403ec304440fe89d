"""The model registry: one spec per model, holding every fact the toolkit needs about it."""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from loafing.errors import LoafingError
from loafing.options import check_choice
from loafing.plans import GRANULARITIES, Layout, split_at_fixed_blocks
from loafing.recipes import RECIPES

if TYPE_CHECKING:  # the registry itself needs no torch: listing models builds nothing
    from loafing.models.staged import StagedModel

Normalization = tuple[tuple[float, ...], tuple[float, ...]]
IMAGENET_NORMALIZATION: Normalization = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _no_name(depths: tuple[int, ...]) -> str | None:
    return None


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: how to build it and the facts about it the toolkit relies on."""

    name: str
    build: Callable[[int, float], StagedModel]  # (num_classes, width_mult) -> model
    description: str
    recipe: str  # input size and augmentation family, a key of loafing.recipes.RECIPES
    classifier_key: str  # state-dict key of the classifier weight: a foreign checkpoint's class count
    normalization: Normalization = IMAGENET_NORMALIZATION  # default input normalization (foreign weights)
    width_mult: bool = False  # whether --width-mult is supported
    # The name of the architecture a plan with these per-stage depths is, if it has one (Fig. 1's labels).
    architecture_name: Callable[[tuple[int, ...]], str | None] = field(default=_no_name)
    min_image_size: int = 1  # the smallest input side the network takes (DenseNet's last transition pools 2x2)
    # Renames a foreign state dict's keys to today's names (old torchvision DenseNet files), if needed.
    rename_keys: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    # The body's stages and skippable blocks (see `body_layout`), so that listing them builds no network; None:
    # found by building the network once. A declared layout is checked against the built one at every build.
    declared_layout: Layout | None = None

    @property
    def image_size(self) -> int:
        """Side of the square images the model takes (from its recipe)."""
        return RECIPES[self.recipe].image_size

    def layout(self) -> Layout:
        """The model's stages and skippable blocks (declared, else from the network built once)."""
        return self.declared_layout or _layout(self.name)


def body_layout(stage_sizes: Sequence[int], fixed: Iterable[int] = (), prefix_only: bool = False) -> Layout:
    """A Layout from the blocks per stage and the blocks that cannot be skipped (1-based, counted over the body), its
    stages split as a built network's are (`split_at_fixed_blocks`)."""
    starts = [sum(stage_sizes[:i]) for i in range(len(stage_sizes))]
    stages = tuple(tuple(range(start + 1, start + size + 1)) for start, size in zip(starts, stage_sizes))
    skippable = frozenset(b for stage in stages for b in stage) - frozenset(fixed)
    return split_at_fixed_blocks(Layout(stages, skippable, prefix_only))


MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add a model to the registry (a name can be registered once)."""
    if spec.name in MODELS:
        raise ValueError(f"model {spec.name!r} is already registered")
    if spec.recipe not in RECIPES:
        raise ValueError(f"model {spec.name!r}: unknown recipe {spec.recipe!r}; valid choices: {', '.join(RECIPES)}")
    MODELS[spec.name] = spec
    return spec


def unregister_model(name: str) -> None:
    """Remove a model from the registry (for models registered only for a while, e.g. in tests)."""
    MODELS.pop(name, None)
    _layout.cache_clear()


# Networks of these libraries are staged by the adapter (`loafing.models.adapter`): `timm:<name>`, `torchvision:<name>`.
LIBRARY_PREFIXES = ("timm", "torchvision")


def is_library_model(name: str) -> bool:
    """Whether `name` names a library network (`timm:<name>`, `torchvision:<name>`), not a registered model."""
    return ":" in name and name.partition(":")[0] in LIBRARY_PREFIXES


class ModelNames(list):
    """The registered models' names, then `timm:<name>` and `torchvision:<name>`; a library network's name counts
    as one of them (the adapter checks it when it is built)."""

    def __contains__(self, name: object) -> bool:
        return (isinstance(name, str) and is_library_model(name)) or super().__contains__(name)


def model_choices() -> ModelNames:
    """What `--model` accepts, as choices for the command line and validation."""
    return ModelNames([*MODELS, *(f"{prefix}:<name>" for prefix in LIBRARY_PREFIXES)])


ARG_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RESERVED_ARGS = {"num_classes": "the number of classes comes from the data set",
                 "pretrained": "pretrained weights are not loaded through --model-arg",
                 "weights": "pretrained weights are not loaded through --model-arg"}
SCALARS = (bool, int, float, str)


def check_model_args(args: Mapping[str, Any] | None, model: str | None = None) -> dict[str, Any]:
    """`args` (a library network's builder arguments) as a plain dict, refused in one line unless its keys are names
    and its values bool, int, float, text or lists of them, and (given `model`) unless `model` takes arguments."""
    if args is not None and not isinstance(args, Mapping):
        raise LoafingError(f"model arguments {args!r} are not a table of keyword arguments")
    args = dict(args or {})
    if args and model is not None and not is_library_model(model):
        raise LoafingError(f"model {model!r} takes no --model-arg (only timm:<name> and torchvision:<name> models do); "
                           f"got {', '.join(map(str, args))}")
    for key, value in args.items():
        if not isinstance(key, str) or not ARG_RE.fullmatch(key):
            raise LoafingError(f"model argument {key!r} is not a keyword argument name")
        if key in RESERVED_ARGS:
            raise LoafingError(f"--model-arg {key} is not allowed: {RESERVED_ARGS[key]}")
        items = value if isinstance(value, (list, tuple)) else [value]
        if not all(type(v) in SCALARS for v in items):
            raise LoafingError(f"model argument {key}={value!r} is not a bool, int, float, text or a list of them")
        if isinstance(value, tuple):  # one form, so that arguments compare equal after a round trip through JSON
            args[key] = list(value)
    return args


def get_spec(name: str, model_args: dict[str, Any] | None = None, granularity: str = "block") -> ModelSpec:
    """The spec of a registered model, or of a library network built with `model_args`, seen at `granularity`;
    unknown names are rejected with the valid ones."""
    check_choice("granularity", granularity, list(GRANULARITIES))
    if is_library_model(name):
        from loafing.models.adapter import adapted_spec  # here: listing the registered models imports no torch

        return adapted_spec(name, model_args, granularity)
    if name not in MODELS:
        raise LoafingError(f"unknown model {name!r}; valid choices: {', '.join(model_choices())}")
    check_model_args(model_args, name)
    if granularity != "block":
        from loafing.models.units import no_units

        raise no_units(f"model {name!r}")
    return MODELS[name]


def create_model(name: str, num_classes: int, width_mult: float = 1.0,
                 model_args: dict[str, Any] | None = None, granularity: str = "block") -> StagedModel:
    """Build a registered model, or a library network with `model_args` seen at `granularity`, with its spec's
    default input normalization."""
    spec = get_spec(name, model_args, granularity)
    if width_mult != 1.0 and not spec.width_mult:
        supported = sorted(n for n, s in MODELS.items() if s.width_mult)
        raise LoafingError(f"--width-mult is only supported by: {', '.join(supported)}")
    if width_mult <= 0:
        raise LoafingError(f"--width-mult must be positive, got {width_mult}")
    model = spec.build(num_classes, width_mult)
    model.set_normalization(*spec.normalization)
    if spec.declared_layout is not None and model.layout != spec.declared_layout:
        raise ValueError(f"model {name!r}: its declared layout {spec.declared_layout} is not the built network's "
                         f"{model.layout}")
    return model


@functools.lru_cache(maxsize=None)
def _layout(name: str) -> Layout:
    """A model's layout from the network built on the meta device (no memory, no initialization), else on the CPU."""
    import torch

    try:
        with torch.device("meta"):
            return create_model(name, 10).layout
    except (RuntimeError, NotImplementedError):  # a model whose construction computes on its tensors
        return create_model(name, 10).layout
