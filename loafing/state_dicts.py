"""Fitting a state dict to a network: a foreign file's state dict (its kind, `module.` prefixes gone), strict loading
with one-line reports of what does not fit, and the warnings a loaded network's tensors call for."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from loafing.errors import LoafingError, LoafingWarning


def _strip_prefix(state_dict: dict[str, Any], prefix: str) -> dict[str, Any]:
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def foreign_kind(obj: dict[str, Any]) -> str | None:
    """The kind of a foreign checkpoint's contents: "akamaster" (`{'state_dict', 'best_prec1'}`), "torchvision" (a
    plain state dict, as torchvision and timm save them), or None for neither."""
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        return "akamaster"
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return "torchvision"
    return None


def foreign_state_dict(obj: dict[str, Any], path: str | Path) -> tuple[str, dict[str, Any]]:
    """The state dict of a foreign checkpoint's contents (`module.` prefixes stripped) and its kind (`foreign_kind`)."""
    source = foreign_kind(obj)
    if source is None:
        raise LoafingError(f"checkpoint {str(path)!r} is neither a loafing checkpoint nor a state dict")
    return source, _strip_prefix(obj["state_dict"] if source == "akamaster" else obj, "module.")


def _check_kinds(own: dict[str, torch.Tensor], state_dict: dict[str, Any], what: str) -> None:
    """Refuse a value that is no tensor, or an integer tensor where the network holds floats (or the reverse): a
    wrong file, whose numbers a cast would only disguise. Floats of another precision are converted, said once."""
    for key in own:
        if not isinstance(state_dict[key], torch.Tensor):
            raise LoafingError(f"{what} does not fit the model: {key} is a {type(state_dict[key]).__name__}, not a "
                               "tensor")
    wrong = [k for k in own if own[k].is_floating_point() != state_dict[k].is_floating_point()]
    if wrong:
        key = wrong[0]
        raise LoafingError(f"{what} does not fit the model: {len(wrong)} tensors of another kind (e.g. {key} is "
                           f"{str(state_dict[key].dtype).removeprefix('torch.')} where the model holds "
                           f"{str(own[key].dtype).removeprefix('torch.')})")
    other = [k for k in own if own[k].is_floating_point() and state_dict[k].dtype != own[k].dtype]
    if other:
        kinds = sorted({str(state_dict[k].dtype).removeprefix("torch.") for k in other})
        warnings.warn(LoafingWarning(
            f"{what} holds {' and '.join(kinds)} tensors ({len(other)}, e.g. {other[0]}); they are converted to the "
            f"model's {str(own[other[0]].dtype).removeprefix('torch.')}"), stacklevel=3)


def load_weights(module: torch.nn.Module, state_dict: dict[str, Any], what: str) -> None:
    """Strictly load `state_dict`, reporting missing, unexpected, mis-shaped keys and tensors of another kind in one
    line (floats of another precision are converted, with one warning).

    As PyTorch itself does for files saved before BatchNorm counted its batches, a missing
    `num_batches_tracked` buffer (and only that) is accepted and starts at 0.
    """
    own = module.state_dict()
    state_dict = dict(state_dict)
    for key in own:
        if key.endswith(".num_batches_tracked") and key not in state_dict:
            state_dict[key] = torch.zeros_like(own[key])
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shape = {k: tuple(getattr(v, "shape", ())) for k, v in state_dict.items()}  # a value that is no tensor: below
    mismatched = [k for k in own if k in state_dict and tuple(own[k].shape) != shape[k]]
    if missing or unexpected or mismatched:
        examples = (missing + unexpected + mismatched)[:3]
        raise LoafingError(
            f"{what} does not fit the model: {len(missing)} missing keys, {len(unexpected)} unexpected keys, "
            f"{len(mismatched)} keys of the wrong shape (e.g. {', '.join(examples)})")
    _check_kinds(own, state_dict, what)
    module.load_state_dict(state_dict)


def warn_if_not_finite(model: torch.nn.Module, path: str | Path) -> None:
    """Warn (LoafingWarning) when a checkpoint's weights or statistics hold NaN or infinite values."""
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        warnings.warn(LoafingWarning(f"checkpoint {str(path)!r} holds non-finite values in {len(bad)} tensors "
                                     f"(e.g. {bad[0]}): every number measured from it is meaningless"), stacklevel=2)
