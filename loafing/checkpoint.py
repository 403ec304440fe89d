"""Checkpoints: the toolkit's own (complete) format and foreign ones (akamaster CIFAR ResNets, torchvision)."""
from __future__ import annotations

import math
import os
import pickle
import re
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from loafing.config import TrainConfig
from loafing.errors import LoafingError, LoafingWarning
from loafing.hub import hub_checkpoint, is_hub_name
from loafing.io import save_torch
from loafing.models import StagedModel, create_model, get_spec, is_library_model
from loafing.models.registry import check_model_args
from loafing.options import option_specs
from loafing.method_styles import FOREIGN_METHOD
# Fitting state dicts to networks, also imported from here by older code.
from loafing.state_dicts import foreign_kind, foreign_state_dict, load_weights, warn_if_not_finite  # noqa: F401

FORMAT = "loafing-checkpoint"
FORMAT_VERSION = 1
OWN_KEYS = ("model", "optimizer", "scheduler", "epoch", "config", "normalization")  # every own checkpoint's
RESUME_KEYS = ("rng", "log_rows", "kl_rows")  # what a training run's checkpoints add, for --resume


@dataclass
class LoadedModel:
    """A model ready to evaluate, with the identifiers its results carry."""

    model: StagedModel
    config: dict[str, Any]
    source: str  # "loafing", "akamaster" or "torchvision"


def save_checkpoint(path: str | Path, model: StagedModel, optimizer: torch.optim.Optimizer,
                    scheduler: Any, epoch: int, config: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    """Write a complete training checkpoint atomically."""
    state = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "config": config,
        "normalization": model.normalization,
        "seed": config.get("seed"),
    }
    state.update(extra or {})
    save_torch(state, path)


def _check_file(path: Path) -> None:
    """A one-line error unless `path` is a regular file (not missing, a folder, a FIFO or a device)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if path.is_symlink():
            raise LoafingError(f"checkpoint {str(path)!r} is a link to {os.readlink(path)!r}, which does not exist") \
                from None
        raise LoafingError(f"checkpoint {str(path)!r} does not exist") from None
    except OSError as err:
        raise LoafingError(f"checkpoint {str(path)!r} cannot be read: {err.strerror}") from None
    if stat.S_ISDIR(mode):
        raise LoafingError(f"checkpoint {str(path)!r} is a folder, not a checkpoint file")
    if not stat.S_ISREG(mode):
        raise LoafingError(f"checkpoint {str(path)!r} is not a regular file (a FIFO, device or socket), not a "
                           "checkpoint file")


def _torch_load(path: Path, weights_only: bool) -> Any:
    with warnings.catch_warnings():  # torch warns about old pickle protocols it reads fine
        warnings.simplefilter("ignore", UserWarning)
        return torch.load(path, map_location="cpu", weights_only=weights_only)


def is_safetensors(path: Path) -> bool:
    """Whether `path` is in the safetensors format (a little-endian header length, then the JSON header)."""
    with open(path, "rb") as f:
        head = f.read(9)
    return (len(head) == 9 and head[8:9] == b"{"
            and 0 < int.from_bytes(head[:8], "little") <= os.path.getsize(path) - 8)


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError  # installed with timm, which reads its hub weights with it
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        said = " ".join(str(err).split())[:200] or type(err).__name__
        raise LoafingError(f"checkpoint {str(path)!r} is an unreadable safetensors file: {said}") from None


def read_checkpoint(path: str | Path, unsafe_load: bool = False, resume: bool = False,
                    own: bool = False) -> dict[str, Any]:
    """Load a checkpoint file on the CPU with `weights_only=True` (tensors and plain types only, so nothing in
    the file can run code), with one-line errors for missing, unreadable, unsafe or (in the toolkit's own format)
    incomplete files. `own` refuses, in one line, a file in any other format (a run folder's checkpoint, which its
    callers read as one of the toolkit's); `resume` implies it and also requires what resuming a run reads. A
    safetensors file (tensors only by design, as the Hugging Face hub keeps timm's weights) is read as its state dict.

    `unsafe_load` unpickles anything, for a file the user trusts that holds other Python objects (and says so).
    """
    path = Path(path)
    _check_file(path)
    if is_safetensors(path):
        if own or resume:
            raise _not_a_run(path, "a safetensors file of weights", resume)
        return _load_safetensors(path)
    try:
        obj = _torch_load(path, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found is None:  # not an object the safe unpickler refused, but bytes that are no pickle at all
            raise LoafingError(f"checkpoint {str(path)!r} is unreadable: {type(err).__name__}") from None
        if not unsafe_load:
            raise LoafingError(
                f"checkpoint {str(path)!r} holds Python objects ({found.group(1)}) that only full unpickling can "
                "rebuild, which can run code; nothing in it was run. Pass --unsafe-load only if you trust the file") \
                from None
        warnings.warn(LoafingWarning(f"--unsafe-load: {str(path)!r} holds Python objects ({found.group(1)}) and is "
                                     "unpickled in full, so any code in it runs"), stacklevel=2)
        obj = None
    except Exception as err:  # torch raises many types for corrupt files
        raise LoafingError(f"checkpoint {str(path)!r} is unreadable: {type(err).__name__}") from None
    if obj is None:
        try:
            obj = _torch_load(path, weights_only=False)
        except Exception as err:
            raise LoafingError(f"checkpoint {str(path)!r} is unreadable: {type(err).__name__}") from None
    if not isinstance(obj, dict):
        raise LoafingError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a dict of weights")
    if obj.get("format") == FORMAT:
        check_own_checkpoint(obj, path, resume)
    elif own or resume:
        raise _not_a_run(path, FOREIGN_KINDS[foreign_kind(obj)], resume)
    return obj


# What a file in another format than the toolkit's own holds, by its `foreign_kind`.
FOREIGN_KINDS = {"akamaster": "a foreign checkpoint (akamaster's format: a state_dict and best_prec1)",
                 "torchvision": "a foreign state dict (as torchvision and timm save them)",
                 None: "a dict of something other than weights"}


def _not_a_run(path: Path, what: str, resume: bool) -> LoafingError:
    return LoafingError(f"checkpoint {str(path)!r} is {what}, not "
                        + ("a run to resume" if resume else "the checkpoint of a run `loafing train` wrote"))


def _bad(path: str | Path, problem: str) -> LoafingError:
    return LoafingError(f"checkpoint {str(path)!r} is damaged or not loafing's: {problem}")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_own_checkpoint(obj: dict[str, Any], path: str | Path, resume: bool = False) -> None:
    """Raise a one-line LoafingError naming the file and the problem unless `obj` holds all a checkpoint of the
    toolkit's own format holds, each of the right kind (`resume`: also what resuming its run reads)."""
    if obj.get("version") != FORMAT_VERSION:
        raise _bad(path, f"format version {obj.get('version')!r}; this loafing reads version {FORMAT_VERSION}")
    missing = [key for key in OWN_KEYS + (RESUME_KEYS if resume else ()) if key not in obj]
    if missing:
        raise _bad(path, f"it has no {', '.join(repr(k) for k in missing)}")
    if not isinstance(obj["model"], dict) or not all(isinstance(v, torch.Tensor) for v in obj["model"].values()):
        raise _bad(path, "its 'model' is not a dict of tensors")
    for key, kind in (("optimizer", dict), ("scheduler", dict), ("config", dict), ("normalization", dict),
                      *((("rng", dict), ("log_rows", list), ("kl_rows", list)) if resume else ())):
        if not isinstance(obj[key], kind):
            raise _bad(path, f"its {key!r} is a {type(obj[key]).__name__}, not a {kind.__name__}")
    if not isinstance(obj["epoch"], int) or isinstance(obj["epoch"], bool) or obj["epoch"] < 0:
        raise _bad(path, f"its epoch is {obj['epoch']!r}, not a count of epochs")
    config, ranges = obj["config"], {spec.name: spec.range for spec in option_specs(TrainConfig)}
    if not isinstance(config.get("model"), str):
        raise _bad(path, f"its config names no model (model is {config.get('model')!r})")
    try:
        check_model_args(config.get("model_args"), config["model"])
    except LoafingError as err:
        raise _bad(path, f"its config's model arguments: {err}") from None
    classes = config.get("num_classes")
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 1:
        raise _bad(path, f"its config says {classes!r} classes, not a positive number")
    for key in ("width_mult", "image_size"):
        value = config.get(key)
        if value is not None and not (_finite(value) and (ranges.get(key) is None or ranges[key].contains(value))):
            raise _bad(path, f"its config's {key} is {value!r}, not {ranges.get(key) or 'a finite number'}")
    for key in ("mean", "std"):
        values = obj["normalization"].get(key)
        if (not isinstance(values, (list, tuple)) or len(values) != 3 or not all(_finite(v) for v in values)
                or (key == "std" and min(values) <= 0)):
            raise _bad(path, f"its normalization {key} is {values!r}, not 3 finite numbers"
                       + (" above 0" if key == "std" else ""))


def load_model(path: str | Path, model_name: str | None = None, width_mult: float | None = None,
               num_classes: int | None = None, unsafe_load: bool = False,
               granularity: str | None = None, model_args: dict[str, Any] | None = None) -> LoadedModel:
    """Build the model a checkpoint describes and load its weights (see `read_checkpoint` for `unsafe_load`).

    The toolkit's own checkpoints name their model (and width); foreign ones (akamaster's `{'state_dict',
    'best_prec1'}` with `module.` keys, or a state dict in the network's own key names) need `model_name` (and, for
    a timm / torchvision network, its builder's `model_args`; `width_mult`, default 1); `akamaster:<name>` names a
    published checkpoint, fetched into torch's hub cache (`loafing.hub`). `granularity` views the network by blocks
    or by units whatever it was trained in (default: as it was trained; the weights are the same).
    """
    if is_hub_name(str(path)):
        text = str(path)
        path, implied = hub_checkpoint(text)
        if model_name and model_name != implied:
            raise LoafingError(f"{text} is a {implied}, not --model {model_name}")
        model_name = implied
    obj = read_checkpoint(path, unsafe_load)
    if obj.get("format") == FORMAT:
        config = dict(obj["config"])
        if model_name and model_name != config["model"]:
            raise LoafingError(f"checkpoint holds {config['model']!r}, not {model_name!r}")
        if model_args and model_args != config.get("model_args"):
            raise LoafingError(f"checkpoint {str(path)!r} records the arguments its network was built with; drop "
                               "--model-arg")
        if width_mult is not None and width_mult != config.get("width_mult", 1.0):
            raise LoafingError(f"checkpoint {str(path)!r} records its width multiplier "
                               f"({config.get('width_mult', 1.0):g}); drop --width-mult")
        trained = config.get("granularity", "block")
        if config.get("plan") and granularity not in (None, trained):
            raise LoafingError(f"checkpoint {str(path)!r} trained the sub-network {config['plan']} alone in the "
                               f"{trained} view, whose steps its plan numbers: evaluate it with --granularity "
                               f"{trained}")
        model = create_model(config["model"], config["num_classes"], config.get("width_mult", 1.0),
                             config.get("model_args"), granularity or trained)
        load_weights(model, obj["model"], f"checkpoint {str(path)!r}")
        model.set_normalization(obj["normalization"]["mean"], obj["normalization"]["std"])
        warn_if_not_finite(model, path)
        return LoadedModel(model.eval(), config, "loafing")

    source, state_dict = foreign_state_dict(obj, path)
    if not model_name:
        raise LoafingError(f"checkpoint {str(path)!r} is a foreign {source} state dict: pass --model")
    if is_library_model(model_name) and source != "akamaster":
        source = model_name.partition(":")[0]
    spec = get_spec(model_name, model_args)
    if spec.rename_keys is not None:
        state_dict = spec.rename_keys(state_dict)
    classifier = spec.classifier_key
    if not num_classes and classifier not in state_dict:
        raise LoafingError(f"cannot tell the number of classes of {str(path)!r}: no {classifier!r} in it")
    classes = num_classes or int(state_dict[classifier].shape[0])
    width_mult = 1.0 if width_mult is None else width_mult
    # With the spec's default input normalization.
    model = create_model(model_name, classes, width_mult, model_args, granularity or "block")
    load_weights(model.net, state_dict, f"checkpoint {str(path)!r}")
    warn_if_not_finite(model, path)
    config = {"model": model_name, "model_args": check_model_args(model_args), "width_mult": width_mult,
              "num_classes": classes, "method": FOREIGN_METHOD, "source": source, "run": Path(path).stem}
    return LoadedModel(model.eval(), config, source)
