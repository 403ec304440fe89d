"""A timm / torchvision network's own weights (`--weights`): `pretrained` or another set its library names (a timm
tag, a torchvision weights name), downloaded and cached by the library's own code, or a state-dict file in the
network's own key names. `loafing train` starts from them; `measure`, `destruct` and `influence` evaluate them.

Named weights bring what they expect of the input: their normalization, and the image size and resize of their
evaluation framing (timm's `pretrained_cfg`, torchvision's `weights.transforms()`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from loafing.checkpoint import FORMAT, LoadedModel, load_model, read_checkpoint
from loafing.state_dicts import foreign_state_dict, load_weights
from loafing.errors import LoafingError
from loafing.hub import check_weights_reachable
from loafing.models import StagedModel, create_model, get_spec, is_library_model
from loafing.models.families import LIBRARIES, PRETRAINED, Library, WeightsFacts
from loafing.models.registry import check_model_args
from loafing.recipes import recipe_for
from loafing.method_styles import FOREIGN_METHOD

# Data sets every model sees at one size (load_digits_splits refuses --image-size): no framing from the weights.
FIXED_SIZE_DATASETS = ("digits",)


def _library(model: str) -> tuple[Library, str]:
    if not is_library_model(model):
        raise LoafingError(f"--weights gives a timm:<name> or torchvision:<name> network its library's weights, not "
                           f"{model!r} (a registered model's checkpoint is read with --ckpt)")
    library, _, arch = model.partition(":")
    return LIBRARIES[library], arch


def named_weights(model: str, weights: str) -> WeightsFacts | None:
    """What `weights` are and expect if they name a set of `model`'s library weights; None for a file."""
    library, arch = _library(model)
    return library.weights_facts(arch, weights)


def resolved_weights(model: str, weights: str) -> str:
    """`weights` as the set its library resolves them to now (`pretrained`: timm's default tag, torchvision's
    DEFAULT member), a file as given: what a run records, so a later library with another default changes nothing."""
    facts = named_weights(model, weights)
    return weights if facts is None else facts.name.rpartition(".")[2]


def check_weights(model: str, model_args: dict[str, Any] | None, weights: str) -> None:
    """Raise a one-line LoafingError unless `model` (with `model_args`) is a library network and `weights` names a
    set of its library's weights or an existing file."""
    library, arch = _library(model)
    get_spec(model, model_args)  # an unknown network or a bad argument is said first
    if named_weights(model, weights) is None and not Path(weights).is_file():
        names = list(library.weight_names(arch))
        if library.weights_facts(arch, PRETRAINED) is not None:
            names.insert(0, PRETRAINED)
        known = f"{', '.join(names)}, or" if names else f"{library.name} has no pretrained weights for {arch}: give"
        raise LoafingError(f"--weights {weights!r} is neither a file nor weights {library.name} has for {arch}; "
                           f"valid choices: {known} a state-dict file")


def weights_state(model: str, model_args: dict[str, Any] | None, weights: str,
                  unsafe_load: bool = False) -> dict[str, torch.Tensor]:
    """The state dict `weights` give `model`'s network built with `model_args`, in its library's key names; named
    weights are downloaded and cached by the library on first use, a file is read safely (`read_checkpoint`)."""
    check_weights(model, model_args, weights)
    facts = named_weights(model, weights)
    if facts is None:  # a file: its state dict as it is (a classifier of other classes, or none, is the caller's)
        obj = read_checkpoint(weights, unsafe_load)
        if obj.get("format") == FORMAT:
            raise LoafingError(f"--weights {weights!r} is a loafing checkpoint, not a state dict: evaluate it with "
                               "--ckpt")
        return foreign_state_dict(obj, weights)[1]
    library, arch = _library(model)
    check_weights_reachable(model, facts.name)  # in seconds, where the library's downloader retries for a minute
    try:
        net = library.pretrained(arch, weights, check_model_args(model_args))
    except Exception as err:  # downloads and the libraries' loaders raise many types
        said = " ".join(str(err).split())[:300] or type(err).__name__
        raise LoafingError(f"{model}'s weights {facts.name} cannot be loaded (a first use downloads them, which "
                           f"needs the network): {said}") from None
    return net.state_dict()


def start_from_weights(model: StagedModel, name: str, model_args: dict[str, Any] | None, weights: str,
                       load: bool = True) -> None:
    """Give a freshly built `model` the input normalization `weights` expect (named weights' own; a file's: the
    network's default) and, with `load`, the weights themselves (not when resuming, whose checkpoint replaces them).

    A classifier for another number of classes than `model`'s is left out: the model's own, freshly initialized
    one is trained instead.
    """
    facts = named_weights(name, weights)
    if facts is not None:
        model.set_normalization(*facts.normalization)
    if not load:
        return
    state = weights_state(name, model_args, weights)
    own = model.net.state_dict()
    classifiers = LIBRARIES[name.partition(":")[0]].classifiers(model.net)
    heads = [k for k in own if k.rpartition(".")[0] in classifiers]
    # Weights trained without a classifier (timm's DINO, MAE: num_classes 0) or for other classes start the model's own.
    if any(k not in state or state[k].shape != own[k].shape for k in heads):
        state = {**state, **{k: own[k] for k in heads}}
    load_weights(model.net, state, f"--weights {weights!r}")


def load_library_weights(name: str, model_args: dict[str, Any] | None, weights: str,
                         width_mult: float | None = None, unsafe_load: bool = False,
                         granularity: str | None = None) -> LoadedModel:
    """A library network with `weights`, ready to evaluate: named weights with their own classes and input
    normalization, a state-dict file as `load_model` reads a foreign one."""
    check_weights(name, model_args, weights)
    facts = named_weights(name, weights)
    if facts is None:
        loaded = load_model(weights, name, width_mult, unsafe_load=unsafe_load, granularity=granularity,
                            model_args=model_args)
        if loaded.source == "loafing":
            raise LoafingError(f"--weights {weights!r} is a loafing checkpoint, not a state dict: evaluate it with "
                               "--ckpt")
    else:
        width_mult = 1.0 if width_mult is None else width_mult
        model = create_model(name, facts.num_classes, width_mult, model_args, granularity or "block")
        load_weights(model.net, weights_state(name, model_args, weights), f"{name}'s weights {facts.name}")
        model.set_normalization(*facts.normalization)
        source = name.partition(":")[0]
        config = {"model": name, "model_args": check_model_args(model_args), "width_mult": width_mult,
                  "num_classes": facts.num_classes, "method": FOREIGN_METHOD, "source": source, "run": facts.name}
        loaded = LoadedModel(model.eval(), config, source)
    loaded.config["weights"] = resolved_weights(name, weights)
    return loaded


def weights_framing(name: str, model_args: dict[str, Any] | None, weights: str | None, dataset: str,
                    image_size: int | None, eval_resize: int | None) -> tuple[int | None, int | None, str]:
    """The image size, evaluation resize and its interpolation of a run or an evaluation from `weights`: the given
    size and resize, else, for named weights of a network taking ImageNet-size inputs, theirs (the resize scaled to a
    given size), and their interpolation (bicubic for most of timm's); the given ones and bilinear for a file's
    weights, a network built for small inputs, small images (the cifar recipe's: `recipe_for`) and data sets of one
    size (digits)."""
    if (not weights or dataset in FIXED_SIZE_DATASETS
            or recipe_for(get_spec(name, model_args).recipe, image_size) != "imagenet"):
        return image_size, eval_resize, "bilinear"
    facts = named_weights(name, weights)
    if facts is None:
        return image_size, eval_resize, "bilinear"
    size = image_size or facts.image_size
    resize = facts.resize if size == facts.image_size else round(size * facts.resize / facts.image_size)
    return size, eval_resize or resize, facts.interpolation


def input_framing(name: str, model_args: dict[str, Any] | None, weights: str | None, dataset: str,
                  image_size: int | None, eval_resize: int | None) -> tuple[str, int | None, int | None, str]:
    """The input recipe of a run or an evaluation (`recipe_for` its image size), with `weights_framing`'s image size,
    evaluation resize and interpolation."""
    size, resize, interpolation = weights_framing(name, model_args, weights, dataset, image_size, eval_resize)
    return recipe_for(get_spec(name, model_args).recipe, size), size, resize, interpolation
