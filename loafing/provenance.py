"""Where a study's run folders and result CSVs came from, so that `loafing reproduce` reuses only its own work.

A run folder records which study trained it and on which data (`study.json`, written when it trains); each result
CSV that `reproduce` writes records the checkpoint (its sha256), the data and the evaluation settings it was made
from (a sidecar `<csv>.json`). The data is identified by what it holds, not where it lies: its data set, class names
and per-split per-class image counts, so a moved or committed study still resumes. Folders and CSVs written before
these records existed are trusted as before (the class count is still checked against the run's).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, TensorDataset

from loafing.config import TrainConfig, with_method_defaults
from loafing.data import DataSplits, Images
from loafing.errors import LoafingError
from loafing.hub import sha256_of
from loafing.io import write_json
from loafing.run_state import CHECKPOINT_NAME, load_config
from loafing.weights import resolved_weights

ORIGIN_NAME = "study.json"
FINGERPRINT = {"dataset": str, "classes": list, "train": list, "test": list}  # a data fingerprint's parts
# Where a run executes, where its folder and its data live do not change what it is (a study's folder may move, e.g.
# committed and checked out on another machine, and resume there).
NOT_IDENTIFYING = ("run", "out", "num_classes", "device", "workers", "data_dir", "download")




def _labels(dataset: Dataset) -> torch.Tensor:
    """The integer labels of a split, without decoding its images where they are known."""
    if isinstance(dataset, Images):
        return torch.tensor(dataset.source.labels, dtype=torch.long)
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[-1].long()
    if getattr(dataset, "targets", None) is not None:  # torchvision's data sets and their kind
        return torch.as_tensor(dataset.targets, dtype=torch.long)
    return torch.tensor([int(label) for _, label in dataset], dtype=torch.long)


def data_fingerprint(data: DataSplits, data_dir: str | None) -> dict[str, Any]:
    """What identifies a data set's contents: its name, class names and each split's image count per class."""
    if data.name == "imagefolder":  # the class folders of train/, sorted, as the image-folder loader names them
        classes = sorted(entry.name for entry in os.scandir(Path(data_dir) / "train") if entry.is_dir())
    else:  # a built-in data set's classes are fixed by its name
        classes = [str(label) for label in range(data.num_classes)]
    return {"dataset": data.name, "classes": classes,
            **{split: torch.bincount(_labels(getattr(data, split)), minlength=data.num_classes).tolist()
               for split in ("train", "test")}}


def data_difference(there: dict[str, Any], here: dict[str, Any]) -> str:
    """The first way two data fingerprints differ, in words ("" when they do not)."""
    if there["dataset"] != here["dataset"]:
        return f"data set {there['dataset']} there, {here['dataset']} here"
    if len(there["classes"]) != len(here["classes"]):
        return f"{len(there['classes'])} classes there, {len(here['classes'])} here"
    for index, (old, new) in enumerate(zip(there["classes"], here["classes"])):
        if old != new:
            return f"class {index} is {old!r} there, {new!r} here"
    for split in ("train", "test"):
        for name, old, new in zip(here["classes"], there[split], here[split]):
            if old != new:
                return f"{old} {split} images of class {name!r} there, {new} here"
    return ""


RESULT_HINT = "delete it to recompute what it describes"
ORIGIN_HINT = "restore it, or delete it (the run then counts as this study's, trained on this data)"


def read_json_record(path: Path, hint: str = RESULT_HINT) -> dict[str, Any] | None:
    """A small JSON record we wrote, or None when there is none; a damaged one is a one-line error ending in
    `hint`."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LoafingError(f"{str(path)!r} is not a readable record ({type(err).__name__}); {hint}") from None
    if not isinstance(record, dict):
        raise LoafingError(f"{str(path)!r} is not a readable record; {hint}")
    return record


def read_origin(run_dir: Path) -> dict[str, Any] | None:
    """Which study trained the run in `run_dir`, on which data (None: a run from before this was recorded)."""
    origin = read_json_record(run_dir / ORIGIN_NAME, ORIGIN_HINT)
    data = (origin or {}).get("data")
    if origin is not None and not (isinstance(origin.get("study"), str) and isinstance(data, dict)
                                   and all(isinstance(data.get(key), kind) for key, kind in FINGERPRINT.items())):
        raise LoafingError(f"{str(run_dir / ORIGIN_NAME)!r} is not a record of the study and data that trained the "
                           f"run; {ORIGIN_HINT}")
    return origin


def write_origin(run_dir: Path, study: str, fingerprint: dict[str, Any]) -> None:
    """Record that `study` trains the run in `run_dir` on the data of `fingerprint` (the first study keeps it)."""
    origin = read_origin(run_dir) if (run_dir / CHECKPOINT_NAME).exists() else None
    record = {"study": (origin or {}).get("study", study), "data": fingerprint}
    if record != origin:
        write_json(record, run_dir / ORIGIN_NAME)


def setting_differences(run_dir: Path, config: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """The settings that identify a run in which the run in `run_dir` differs from `config`: name -> (there, here)
    (its method's options included, the ones left at their defaults as the defaults)."""
    saved = dataclasses.asdict(with_method_defaults(load_config(run_dir)))
    wanted = dataclasses.asdict(with_method_defaults(config))
    for settings in (saved, wanted):  # a run records the set "pretrained" resolved to (one before that, "pretrained")
        if settings["weights"] is not None:
            settings["weights"] = resolved_weights(settings["model"], settings["weights"])
    for settings in (saved, wanted):  # a method's options compared one by one, under their own names
        settings.update(settings.pop("method_options"))
    return {k: (saved.get(k), wanted[k]) for k in wanted if k not in NOT_IDENTIFYING and saved.get(k) != wanted[k]}


def check_run_folder(run_dir: Path, config: TrainConfig, study: str, fingerprint: dict[str, Any],
                     data_name: str) -> None:
    """Refuse, before any work, to overwrite a run another study trained, or to reuse a run trained on other data
    (`data_name` says where this data lies)."""
    if not (run_dir / CHECKPOINT_NAME).exists():
        return
    origin = read_origin(run_dir) or {}
    differences = setting_differences(run_dir, config)
    run = f"run {config.run!r} in {str(run_dir)!r}"
    if differences and origin.get("study", study) != study:
        shown = ", ".join(f"{name} {there!r} there, {here!r} here" for name, (there, here) in differences.items())
        raise LoafingError(f"{run} belongs to study {origin['study']!r}, not {study!r}, and its settings differ "
                           f"({shown}); a run of another study is never overwritten: give study {study!r} another "
                           "--out, or the run another name")
    if differences:  # this study's run, edited: it trains again
        return
    if origin.get("data") is not None:
        difference = data_difference(origin["data"], fingerprint)
    else:  # a run from before data was recorded: only its class count is known
        classes = load_config(run_dir).num_classes
        difference = f"{classes} classes there, {len(fingerprint['classes'])} here" \
            if classes and classes != len(fingerprint["classes"]) else ""
    if difference:
        raise LoafingError(f"{run} was trained on other data than {data_name} ({difference}); its network and "
                           "results do not describe this data: give the data it was trained on (--data-dir), or "
                           "another --out")


def result_record(checkpoint_sha256: str | list[str], fingerprint: dict[str, Any] | None,
                  settings: dict[str, Any]) -> dict[str, Any]:
    """What a result CSV is made from: a checkpoint (or a family of them, by their sha256), data, evaluation
    settings."""
    return {"checkpoint_sha256": checkpoint_sha256, "data": fingerprint, "settings": settings}


def sidecar(csv: Path) -> Path:
    """Where the record of what `csv` was made from is kept."""
    return csv.with_name(csv.name + ".json")


def write_result_record(csv: Path, made_from: dict[str, Any]) -> None:
    """Record, after writing `csv`, what it was made from (with its own hash, so that an edited copy is not trusted);
    an unchanged record is left as it is."""
    record = {**made_from, "csv_sha256": sha256_of(csv)}
    if read_json_record(sidecar(csv)) != record:
        write_json(record, sidecar(csv))


def result_is_current(csv: Path, made_from: dict[str, Any], legacy: bool, checkpoint: Path) -> bool:
    """Whether `csv` holds what `made_from` would make: its record says so and its bytes are the recorded ones; a
    CSV with no record counts only in a `legacy` run folder (one from before records), when newer than its
    checkpoint."""
    if not csv.exists():
        return False
    record = read_json_record(sidecar(csv))
    if record is None:
        return legacy and csv.stat().st_mtime >= checkpoint.stat().st_mtime
    return record == {**made_from, "csv_sha256": sha256_of(csv)}
