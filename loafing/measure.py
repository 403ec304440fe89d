"""`measure`: every plan of a space, BN-recalibrated, as a tidy table carrying the run's identifiers."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch
from torch.utils.data import DataLoader

import loafing.methods  # noqa: F401  (rows carry the registered methods' styles and run columns)
from loafing.bn import has_batchnorm
from loafing.checkpoint import LoadedModel, load_model
from loafing.data import DataSplits, calibration_images, load_dataset, make_loader
from loafing.distributed import World, process_device, shared_error
from loafing.errors import LoafingError
from loafing.eval_config import EvalConfig
from loafing.evaluate import check_plans, resolve_device
from loafing.io import check_output_file
from loafing.models import StagedModel, get_spec
from loafing.plan_tree import evaluate_plans_across
from loafing.plans import Plan, get_space, parse_plan
from loafing.schema import run_identifiers, with_run_identifiers
from loafing.weights import input_framing, load_library_weights


DEFAULT_DATASET = "digits"  # what a checkpoint naming no data set is evaluated on unless --dataset says otherwise


def evaluation_data(loaded: LoadedModel, dataset: str | None = None, data_dir: str | None = None,
                    download: bool = False, image_size: int | None = None) -> DataSplits:
    """The data a checkpoint is evaluated on: the given data set, else the one it was trained on (else digits, for
    a foreign network built for digits' classes and image size), in its model's input recipe at its training image
    size unless `image_size` says otherwise."""
    config = loaded.config
    named = dataset or config.get("dataset")
    dataset = named or DEFAULT_DATASET
    recipe, image_size, eval_resize, interpolation = evaluation_framing(loaded, dataset, image_size)
    data = load_dataset(dataset, data_dir or config.get("data_dir"), download, recipe, image_size,
                        eval_resize=eval_resize, eval_interpolation=interpolation)
    try:
        check_classes(loaded, data)
    except LoafingError as err:
        raise LoafingError(f"{err}" + ("" if named else f" ({dataset} is only the default: name its data set with "
                                       "--dataset)")) from None
    if not named:
        check_default_data(loaded, data)
    return data


def check_default_data(loaded: LoadedModel, data: DataSplits) -> None:
    """Refuse to evaluate a foreign network on the default data set, which no one named, unless it is built for its
    classes and image size; akamaster's networks are CIFAR-10's, whatever their class count says."""
    config = loaded.config
    where = f"name its data set with --dataset ({data.name}, the default, is a guess)"
    if loaded.source == "akamaster":
        raise LoafingError(f"{config['run']} is in akamaster's format, whose networks are CIFAR-10's: {where}, "
                           "e.g. cifar10, or imagefolder with --data-dir of CIFAR-10's image files")
    side = get_spec(config["model"], config.get("model_args")).image_size
    if side != data.image_size:
        raise LoafingError(f"{config['model']} takes {side}x{side} images, {data.name} {data.image_size}x"
                           f"{data.image_size}: {where}")


def evaluation_framing(loaded: LoadedModel, dataset: str, image_size: int | None = None
                       ) -> tuple[str, int | None, int | None, str]:
    """How a checkpoint's evaluation images are framed on `dataset`: input recipe, image size, evaluation resize and
    its interpolation (its training size and its weights' framing unless `image_size` says otherwise)."""
    config = loaded.config
    return input_framing(config["model"], config.get("model_args"), config.get("weights"), dataset,
                         image_size or config.get("image_size"), config.get("eval_resize"))


def check_classes(loaded: LoadedModel, data: DataSplits) -> None:
    """Raise a one-line LoafingError unless the checkpoint classifies as many classes as the data set has."""
    classes = loaded.config["num_classes"]
    if data.num_classes == classes:
        return
    if loaded.source != "loafing" and loaded.config.get("weights"):
        raise LoafingError(f"{loaded.config['model']}'s weights {loaded.config['run']} classify {classes} classes but "
                           f"{data.name} has {data.num_classes}: evaluate them on a data set of their classes, or "
                           "train from them on this one (loafing train --weights), which replaces their classifier")
    raise LoafingError(f"checkpoint has {classes} classes but {data.name} has {data.num_classes}")


def trained_plan(loaded: LoadedModel) -> Plan | None:
    """The sub-network a run trained alone, or None for a run of the whole network."""
    return parse_plan(loaded.config["plan"]) if loaded.config.get("plan") else None


def plans_to_measure(loaded: LoadedModel, space: str) -> list[Plan]:
    """The plans `measure` evaluates by default: the space's, or the one plan a run trained alone."""
    alone = trained_plan(loaded)
    return [alone] if alone else get_space(space, loaded.model.layout)


def load_for_evaluation(ckpt: str | None, *, model: str | None = None, width_mult: float | None = None,
                        dataset: str | None = None, data_dir: str | None = None, download: bool = False,
                        image_size: int | None = None, unsafe_load: bool = False, world: World = World(),
                        out: str | Path | None = None, granularity: str | None = None,
                        model_args: dict[str, Any] | None = None,
                        weights: str | None = None) -> tuple[LoadedModel, DataSplits]:
    """A checkpoint (loafing's own, or a foreign one of `model` built with `model_args`), or else a timm / torchvision
    `model` with `weights`, seen at `granularity` (default: as trained), and the data set it is evaluated on; `out`,
    the file the evaluation will write, is refused inside the data folder the checkpoint names (when `data_dir` is
    not given)."""
    if (ckpt is None) == (weights is None):
        raise LoafingError("give --ckpt (a checkpoint) or --weights (a timm / torchvision --model's own weights), "
                           + ("not both" if ckpt is not None else "one of them"))
    if weights is not None and not model:
        raise LoafingError("--weights needs --model timm:<name> or torchvision:<name>")
    if download and world.distributed:  # every process would fetch the same files at once
        raise shared_error(world, "--download under torchrun: fetch the data set once in one process, then run "
                           "without --download")
    if weights is not None:
        loaded = load_library_weights(model, model_args, weights, width_mult, unsafe_load, granularity)
    else:
        loaded = load_model(ckpt, model, width_mult, unsafe_load=unsafe_load, granularity=granularity,
                            model_args=model_args)
    if out is not None and data_dir is None:
        check_output_file(out, folders=[loaded.config.get("data_dir")])
    return loaded, evaluation_data(loaded, dataset, data_dir, download, image_size)


def evaluation_device(evaluation: EvalConfig, world: World = World()) -> torch.device:
    """The device this process evaluates on: the configured one (under torchrun, the GPU of its local rank)."""
    return process_device(world, resolve_device(evaluation.device))


def recalibrates(model: StagedModel, evaluation: EvalConfig) -> bool:
    """Whether BN is recalibrated for this evaluation (LayerNorm networks have nothing to recalibrate)."""
    return evaluation.recalibrate and has_batchnorm(model)


def calibration_loader(model: StagedModel, data: DataSplits, evaluation: EvalConfig) -> DataLoader | None:
    """The seeded training images that recalibrate BN before each evaluation, or None when nothing is recalibrated."""
    if not recalibrates(model, evaluation):
        return None
    return make_loader(calibration_images(data, evaluation.calib_size, evaluation.calib_seed, evaluation.calib_augment),
                       evaluation.batch_size)


def calibration_columns(model: StagedModel, data: DataSplits, evaluation: EvalConfig) -> dict[str, Any]:
    """The calibration columns of an evaluation's rows: recalibrated, calib_size, calib_seed, calib_augmented."""
    recalibrated = recalibrates(model, evaluation)
    return {"recalibrated": recalibrated,
            "calib_size": min(evaluation.calib_size, len(data.train_plain)) if recalibrated else 0,
            "calib_seed": evaluation.calib_seed, "calib_augmented": recalibrated and evaluation.calib_augment}


def measure_plans(loaded: LoadedModel, plans: Sequence[Plan], data: DataSplits, evaluation: EvalConfig, *,
                  space: str = "plans", progress: bool = True, world: World = World()) -> pd.DataFrame:
    """The measure table of `plans` on the test split, each BN-recalibrated on a seeded subset of the train split.

    `space` names where the plans came from (a space's name, or "plans"). For a sub-network trained
    alone (`--plan`), KL and `is_main` refer to that trained network. With a `world` of several processes
    (torchrun, its process group joined), each evaluates a share of the plans and every one returns the table.
    """
    plans = check_plans(loaded.model, plans)
    device = evaluation_device(evaluation, world)
    model = loaded.model.to(device)
    test_loader = make_loader(data.test, evaluation.batch_size)
    df = evaluate_plans_across(world, model, plans, test_loader, calibration_loader(model, data, evaluation), device,
                               progress, reference=trained_plan(loaded))
    for column, value in calibration_columns(model, data, evaluation).items():
        df[column] = value
    df["space"] = space
    df["granularity"] = model.granularity
    df["architecture"] = architecture_names(loaded.config["model"], df["depths"], loaded.config.get("model_args"))
    return with_run_identifiers(df, run_identifiers(loaded.config, data.name))


def architecture_names(model: str, depths: Sequence[str], model_args: dict | None = None) -> list[str]:
    """What the model's spec calls each network of these per-stage depths ("ResNet20"), or "" (for the figures)."""
    spec = get_spec(model, model_args)
    return [spec.architecture_name(tuple(int(d) for d in text.split("-"))) or "" for text in depths]


def summarize_measure(df: pd.DataFrame) -> dict[str, float]:
    """Main network top-1 and max / mean / std / min top-1 over the other plans."""
    subs = df.loc[~df["is_main"], "top1"]
    main = df.loc[df["is_main"], "top1"]
    return {
        "main_top1": float(main.iloc[0]) if len(main) else float("nan"),
        "n_subnetworks": int(len(subs)),
        "sub_max": float(subs.max()),
        "sub_mean": float(subs.mean()),
        "sub_std": float(subs.std(ddof=0)),
        "sub_min": float(subs.min()),
    }
