"""Any timm or torchvision residual network, staged from its own modules: `--model timm:<name>` / `torchvision:<name>`.

A family (`loafing.models.families`) says, for one network class, where its stem, blocks and head are, which
blocks are skippable and what a block's residual units are. The network itself is built by its library, with
`--model-arg key=value` as its builder's keyword arguments, and is neither rewritten nor re-classed: the staged
view only calls its modules in their order, so its state dict keeps the library's own key names.
"""
from __future__ import annotations

import difflib
import functools
import inspect
from typing import Any, Callable, Mapping

import torch
from torch import nn

from loafing.errors import LoafingError
from loafing.models.families import FAMILIES, LIBRARIES, Family, Transitioned, family_of
from loafing.models.registry import RESERVED_ARGS, ModelSpec, check_model_args
from loafing.models.staged import StagedModel
from loafing.models.units import Unit, no_units, unit_stages
from loafing.recipes import RECIPES, SMALL_INPUT



def parse_value(text: str) -> Any:
    """A --model-arg value: true/false, an int, a float, a list of these when it holds commas ("1,2,2,1"), else
    the text itself."""
    if "," in text:
        return [parse_value(part.strip()) for part in text.split(",") if part.strip()]
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_model_args(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """`key=value` texts (repeatable --model-arg) as a dict, values parsed by `parse_value`."""
    args: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise LoafingError(f"--model-arg {item!r} is not key=value (e.g. --model-arg img_size=32)")
        if key.strip() in args:
            raise LoafingError(f"--model-arg {key.strip()!r} is given twice")
        args[key.strip()] = parse_value(value.strip())
    return check_model_args(args)


def _frozen(args: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in args.items()))


class AdaptedModel(StagedModel):
    """A library network staged by its family: the family's stem, its blocks (a stage's transition run before the
    stage's first block) or, at granularity "unit", its blocks' residual units, and its head, each calling the
    network's own modules."""

    def __init__(self, net: nn.Module, family: Family, input_size: int | None, granularity: str = "block") -> None:
        from loafing.conv import crop_conv_kernels

        net = crop_conv_kernels(net)  # before the blocks are listed, so they are the modules the network holds
        stages = family.stages(net)
        if granularity == "unit":
            stages, skippable = unit_stages(stages, family)
        else:
            skippable = [not isinstance(b, Transitioned) and family.skippable(b) for stage in stages for b in stage]
        super().__init__(net, [b for stage in stages for b in stage], [len(s) for s in stages], skippable)
        self.family, self.input_size, self.granularity = family, input_size, granularity

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_size is not None and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            raise LoafingError(f"this {self.family.name} takes {self.input_size}x{self.input_size} images, got "
                               f"{x.shape[-2]}x{x.shape[-1]}: pass --image-size {self.input_size} (or build it for "
                               "the data's size with --model-arg)")
        return self.family.stem(self.net, x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.family.head(self.net, x)

    def stem_modules(self) -> list[nn.Module]:
        return self.family.stem_modules(self.net)

    def head_modules(self) -> list[nn.Module]:
        return self.family.head_modules(self.net)


class SplitAdaptedModel(AdaptedModel):
    """An adapted network whose skippable blocks end with their shortcut's addition (`Family.adds_last`): a block's
    residual branch is its output less its input (a transformer block's: both of its units together)."""

    def residual(self, index: int, x: torch.Tensor, branch: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 shortcut: bool = True) -> torch.Tensor:
        out = self.block(index)(x) - x
        out = branch(out) if branch is not None else out
        return out + x if shortcut else out


def _unknown(library: str, arch: str) -> LoafingError:
    names = LIBRARIES[library].names()
    close = difflib.get_close_matches(arch, names, n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    patterns = sorted({p for f in FAMILIES if f.library == library for p in f.patterns})
    return LoafingError(f"unknown {library} model {arch!r}; {hint}valid choices: {library}'s models of the families "
                        f"{', '.join(patterns)} (see `loafing models`)")


def _accepted(library: str, arch: str) -> str:
    """The keyword arguments the network's class takes, as a hint after a failed build."""
    try:
        with torch.device("meta"):
            net = LIBRARIES[library].build(arch, 10, {})
    except Exception:  # the hint is best effort: the error itself has been said
        return "see the network's builder for its arguments"
    names = [p.name for p in inspect.signature(type(net).__init__).parameters.values()
             if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
             and p.name not in RESERVED_ARGS and p.name not in ("device", "dtype")]
    fixed = f", less those {arch} sets itself" if library == "torchvision" else ""
    return f"valid choices ({type(net).__name__}'s arguments{fixed}): {', '.join(names)}"


def build_network(name: str, num_classes: int, model_args: Mapping[str, Any] | None = None) -> tuple[nn.Module, Family]:
    """The library's network called `name` (`timm:<arch>`), built with `model_args`, and its family."""
    library, _, arch = name.partition(":")
    if library not in LIBRARIES:
        raise LoafingError(f"unknown model library {library!r}; valid choices: {', '.join(LIBRARIES)}")
    if arch not in LIBRARIES[library].names():
        raise _unknown(library, arch)
    args = check_model_args(model_args)
    try:
        net = LIBRARIES[library].build(arch, num_classes, args)
    except Exception as err:  # the builder may fail in any way on the user's arguments (KeyError: act_layer=x)
        if isinstance(err, (RuntimeError, NotImplementedError)) and torch.empty(0).device.type == "meta":
            raise  # a network whose construction computes on its tensors: built again on the CPU
        raise LoafingError(f"{name} cannot be built with {_given(args)}: {_first_line(err)}; "
                           f"{_accepted(library, arch)}") from None
    family = family_of(library, net)
    if family is None:
        supported = ", ".join(f"{f.library}:{f.name}" for f in FAMILIES)
        raise LoafingError(f"{name} is a {type(net).__name__}, which loafing cannot stage; supported families: "
                           f"{supported}")
    empty = [s for s, blocks in enumerate(family.stages(net), start=1) if not blocks]
    if empty:
        raise LoafingError(f"{name} built with {_given(args)} has no blocks in stage {empty[0]}, and a plan needs at "
                           "least one per stage: check the --model-arg values")
    return net, family


def _given(args: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items()) or "no arguments"


def _first_line(err: BaseException) -> str:
    if isinstance(err, KeyError):  # its text is only the key: a name the library has no entry for
        return f"{type(err).__name__}: no such entry {err.args[0]!r}" if err.args else type(err).__name__
    return str(err).strip().splitlines()[0].rstrip(".") if str(err).strip() else type(err).__name__


def build_adapted(name: str, num_classes: int, model_args: Mapping[str, Any] | None = None,
                  granularity: str = "block") -> AdaptedModel:
    """The staged view of the library network `name` built with `model_args`, at `granularity`."""
    net, family = build_network(name, num_classes, model_args)
    return adapted(net, family, granularity)


def adapted(net: nn.Module, family: Family, granularity: str = "block") -> AdaptedModel:
    """The staged view of `net`, a network of `family`, at `granularity` (one that can run a step's residual branch
    alone where the family's blocks allow it)."""
    if granularity == "unit" and len(family.units) < 2:
        raise no_units(f"{type(net).__name__} (a {family.library}:{family.name} network)")
    return (SplitAdaptedModel if family.adds_last else AdaptedModel)(net, family, family.input_size(net), granularity)


def _staged_on_meta(name: str, model_args: Mapping[str, Any], granularity: str) -> AdaptedModel:
    """The staged network built on the meta device (no memory, no initialization), else on the CPU."""
    try:
        with torch.device("meta"):
            return build_adapted(name, 10, model_args, granularity)
    except (RuntimeError, NotImplementedError):  # a network whose construction computes on its tensors
        return build_adapted(name, 10, model_args, granularity)


def _forward_once(model: AdaptedModel, size: int) -> None:
    """One image through the whole network, in eval mode (BN untouched), without gradients, on its device."""
    x = torch.zeros(1, 3, size, size, device=model.input_mean.device)
    with torch.no_grad():
        model.eval()(x)


def _check_runs(model: AdaptedModel, name: str, args: Mapping[str, Any], granularity: str, size: int) -> None:
    """Refuse, in one line naming the builder arguments, a network that cannot run one RGB image of `size` pixels a
    side (a patch larger than the image, an empty last stage, one input channel): before any data is read."""
    try:
        _forward_once(model, size)
        return
    except LoafingError:
        raise
    except Exception as err:  # a shape error of the library's own forward, on the meta device or the CPU
        error = err
    if model.input_mean.device.type == "meta":  # a meta kernel may lack what the CPU has: the CPU decides
        try:
            _forward_once(build_adapted(name, 10, args, granularity), size)
            return
        except Exception as err:
            error = err
    raise LoafingError(f"{name} built with {_given(args)} cannot run on {size}x{size} RGB images: "
                       f"{_first_line(error)}; check the --model-arg values") from None


@functools.lru_cache(maxsize=64)
def _adapted_spec(name: str, frozen_args: tuple[tuple[str, Any], ...], granularity: str) -> ModelSpec:
    args = {k: list(v) if isinstance(v, tuple) else v for k, v in frozen_args}
    model = _staged_on_meta(name, args, granularity)
    family, net = model.family, model.net
    library = LIBRARIES[family.library]
    mean, std = library.normalization(net)
    size = model.input_size or library.default_size(net)
    recipe = "cifar" if size <= SMALL_INPUT else "imagenet"
    # Every build (train, measure, destruct, ...) asks for the spec first, before any data is read.
    _check_runs(model, name, args, granularity, model.input_size or RECIPES[recipe].image_size)
    given = "".join(f" {k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in args.items())
    view = f"; unit view: each block's {' and '.join(family.units)} units" if granularity == "unit" else ""
    return ModelSpec(
        name=name, build=lambda num_classes, width_mult: build_adapted(name, num_classes, args, granularity),
        description=f"{family.library} {name.partition(':')[2]}{given} ({family.description}{view})",
        recipe=recipe, classifier_key=library.classifier_key(net),
        normalization=(tuple(mean), tuple(std)), declared_layout=model.layout)


def adapted_spec(name: str, model_args: Mapping[str, Any] | None = None, granularity: str = "block") -> ModelSpec:
    """The spec of a library network with these builder arguments, at `granularity` (built once on the meta
    device)."""
    args = check_model_args(model_args)
    return _adapted_spec(name, _frozen(args), granularity)


def _step_kind(step: nn.Module) -> str:
    """A step's module class; a unit's as its block's class and its name ("Block.attn")."""
    if isinstance(step, Transitioned):
        return f"{type(step.transition).__name__}+{_step_kind(step.block)}"
    return f"{type(step.block).__name__}.{step.name}" if isinstance(step, Unit) else type(step).__name__


def describe_blocks(model: StagedModel) -> list[str]:
    """One line per stage: its blocks (or units), each with its module class, `*` marking the skippable ones."""
    lines = []
    for s, blocks in enumerate(model.layout.stages, start=1):
        items = [f"{b}{'*' if b in model.layout.skippable else ''} {_step_kind(model.block(b))}" for b in blocks]
        lines.append(f"stage {s}: " + ", ".join(items))
    return lines
