"""Checkpoints: the toolkit's own (complete) format and foreign ones (akamaster CIFAR ResNets, torchvision)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from loafing.errors import LoafingError
from loafing.io import save_torch
from loafing.models import StagedModel, create_model, get_spec

FORMAT = "loafing-checkpoint"
FORMAT_VERSION = 1


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


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file on the CPU, with one-line errors for missing or unreadable files."""
    path = Path(path)
    if not path.is_file():
        raise LoafingError(f"checkpoint {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for corrupt files
        raise LoafingError(f"checkpoint {str(path)!r} is unreadable: {type(err).__name__}") from None
    if not isinstance(obj, dict):
        raise LoafingError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a dict of weights")
    return obj


def _strip_prefix(state_dict: dict[str, Any], prefix: str) -> dict[str, Any]:
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def load_weights(module: torch.nn.Module, state_dict: dict[str, Any], what: str) -> None:
    """Strictly load `state_dict`, reporting missing, unexpected and mis-shaped keys in one line."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [k for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if missing or unexpected or mismatched:
        examples = (missing + unexpected + mismatched)[:3]
        raise LoafingError(
            f"{what} does not fit the model: {len(missing)} missing keys, {len(unexpected)} unexpected keys, "
            f"{len(mismatched)} keys of the wrong shape (e.g. {', '.join(examples)})")
    module.load_state_dict(state_dict)




def load_model(path: str | Path, model_name: str | None = None, width_mult: float = 1.0,
               num_classes: int | None = None) -> LoadedModel:
    """Build the model a checkpoint describes and load its weights.

    The toolkit's own checkpoints name their model; foreign ones (akamaster's `{'state_dict',
    'best_prec1'}` with `module.` keys, or a torchvision state dict) need `model_name`.
    """
    obj = read_checkpoint(path)
    if obj.get("format") == FORMAT:
        config = dict(obj["config"])
        if model_name and model_name != config["model"]:
            raise LoafingError(f"checkpoint holds {config['model']!r}, not {model_name!r}")
        model = create_model(config["model"], config["num_classes"], config.get("width_mult", 1.0))
        load_weights(model, obj["model"], f"checkpoint {str(path)!r}")
        model.set_normalization(obj["normalization"]["mean"], obj["normalization"]["std"])
        return LoadedModel(model.eval(), config, "loafing")

    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        source, state_dict = "akamaster", obj["state_dict"]
    elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        source, state_dict = "torchvision", obj
    else:
        raise LoafingError(f"checkpoint {str(path)!r} is neither a loafing checkpoint nor a state dict")
    if not model_name:
        raise LoafingError(f"checkpoint {str(path)!r} is a foreign {source} state dict: pass --model")
    state_dict = _strip_prefix(state_dict, "module.")
    classifier = get_spec(model_name).classifier_key
    if not num_classes and classifier not in state_dict:
        raise LoafingError(f"cannot tell the number of classes of {str(path)!r}: no {classifier!r} in it")
    classes = num_classes or int(state_dict[classifier].shape[0])
    model = create_model(model_name, classes, width_mult)  # with the spec's default input normalization
    load_weights(model.net, state_dict, f"checkpoint {str(path)!r}")
    config = {"model": model_name, "width_mult": width_mult, "num_classes": classes, "method": "external",
              "source": source, "run": Path(path).stem}
    return LoadedModel(model.eval(), config, source)
