"""Fig. 1 and Tables r5/r6 as a study: every smaller network of a family measured as a sub-network inside every
bigger one (the host's ordered plan with the smaller network's per-stage depths, BN-recalibrated), and every
network on its own ("trained alone"), as one tidy measure table.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from loafing.checkpoint import LoadedModel, load_model
from loafing.data import DataSplits, make_loader
from loafing.errors import LoafingError
from loafing.eval_config import EvalConfig
from loafing.io import check_output_folder
from loafing.measure import (architecture_names, calibration_columns, calibration_loader, check_classes,
                             evaluation_data, evaluation_device, evaluation_framing, measure_plans, trained_plan)
from loafing.plan_tree import evaluate_plans
from loafing.plans import Plan, ordered_plan
from loafing.recipes import RECIPES
from loafing.method_styles import method_style
from loafing.schema import run_identifiers, with_run_identifiers
from loafing.weights import FIXED_SIZE_DATASETS

Z_95 = 1.959964  # two-sided 95% normal quantile
BLOCK = "block"  # the one view in which a network trained alone and a host's sub-network are the same architecture


def architecture_depths(loaded: LoadedModel) -> tuple[int, ...]:
    """Per-stage depths of the network a checkpoint holds (of its plan, for a sub-network trained alone)."""
    return (trained_plan(loaded) or loaded.model.layout.main_plan).depths


def inside_plans(host: LoadedModel, networks: Sequence[LoadedModel]) -> list[Plan]:
    """The host's own network, then the host's ordered plan for every smaller network whose depths fit in it."""
    layout = host.model.layout
    own = trained_plan(host) or layout.main_plan
    plans = [own]
    for other in networks:
        depths = architecture_depths(other)
        fits = len(depths) == len(layout.stage_sizes) and all(d <= n for d, n in zip(depths, layout.stage_sizes))
        if fits and depths != own.depths and trained_plan(host) is None:
            plans.append(ordered_plan(layout, depths))
    return list(dict.fromkeys(plans))


def check_inside_view(granularity: str | None) -> None:
    """Refuse a view other than blocks for the inside-vs-alone comparison (a study checks it before training)."""
    if granularity not in (None, BLOCK):
        raise LoafingError(f"inside-vs-alone compares networks block by block (a smaller network inside a bigger one "
                           f"is its first blocks of each stage); --granularity {granularity} has no such comparison")


def load_family(checkpoints: Sequence[str], dataset: str | None = None, data_dir: str | None = None,
                image_size: int | None = None, unsafe_load: bool = False, *, out_folder: str | Path | None = None,
                granularity: str | None = None, download: bool = False) -> tuple[list[LoadedModel], DataSplits]:
    """The checkpoints of one family (each `PATH`, loafing's own, or `MODEL=PATH`, foreign), each seen by its blocks
    (`granularity` may only say "block": a sub-network trained alone in the unit view is refused), and the data set
    they are evaluated on: the given one, else the first checkpoint's (else digits); every checkpoint must fit it.
    `out_folder`, where the results go, is refused inside the data folder the first checkpoint names."""
    check_inside_view(granularity)
    networks = []
    for text in checkpoints:
        model, _, path = text.rpartition("=")
        loaded = load_model(path, model or None, unsafe_load=unsafe_load, granularity=granularity)
        if loaded.model.granularity != BLOCK:  # trained in another view: the same network, seen by its blocks
            if trained_plan(loaded) is not None:
                raise LoafingError(f"{path} trained the sub-network {loaded.config['plan']} alone in the "
                                   f"{loaded.model.granularity} view, whose steps are not blocks: inside-vs-alone "
                                   "compares networks block by block (measure it with `loafing measure`)")
            loaded = load_model(path, model or None, unsafe_load=unsafe_load, granularity=BLOCK)
        networks.append(loaded)
    if not networks:
        raise LoafingError("give at least two checkpoints: a smaller network and one it fits inside")
    names = [network.config.get("run") for network in networks]
    twice = next((name for name in names if names.count(name) > 1), None)
    if twice is not None:  # the tables tell networks apart by their run name
        paths = [text.rpartition("=")[2] for text, name in zip(checkpoints, names) if name == twice]
        raise LoafingError(f"two checkpoints are both named {twice!r} ({', '.join(paths)}); rename a file or run "
                           "folder so that each network has a name of its own")
    if out_folder is not None and data_dir is None:
        check_output_folder(out_folder, folders=[networks[0].config.get("data_dir")])
    data = evaluation_data(networks[0], dataset, data_dir, download, image_size)
    data_set = dataset or networks[0].config.get("dataset") or "digits"
    framing = _framing(networks[0], data_set, image_size)
    for text, loaded in zip(checkpoints[1:], networks[1:]):
        check_classes(loaded, data)
        other = _framing(loaded, data_set, image_size)
        if other != framing:  # one set of test images serves the whole family: each must see them as it expects
            raise LoafingError(f"{text.rpartition('=')[2]} expects its test images framed otherwise "
                               f"({_framing_text(other)}) than {checkpoints[0].rpartition('=')[2]} "
                               f"({_framing_text(framing)}); measure networks that expect the same images together")
    return networks, data


def _framing(loaded: LoadedModel, dataset: str, image_size: int | None) -> tuple[str, int, int, str] | None:
    """The recipe, crop side, resize side and interpolation of `loaded`'s test images (None: a data set of one
    size, framed alike for every network)."""
    if dataset in FIXED_SIZE_DATASETS:
        return None
    recipe, size, resize, interpolation = evaluation_framing(loaded, dataset, image_size)
    return (recipe, *RECIPES[recipe].eval_frame(size, resize), interpolation)


def _framing_text(framing: tuple[str, int, int, str]) -> str:
    recipe, size, resize, interpolation = framing
    return f"{recipe} recipe, {size} px after a {interpolation} resize to {resize}"


def inside_vs_alone(networks: Sequence[LoadedModel], data: DataSplits, evaluation: EvalConfig, *,
                    progress: bool = True) -> pd.DataFrame:
    """The measure table of every network on its own and of every smaller one inside it (`space` "inside")."""
    if len(networks) < 2:
        raise LoafingError("give at least two checkpoints: a smaller network and one it fits inside")
    tables = [measure_plans(host, inside_plans(host, networks), data, evaluation, progress=progress, space="inside")
              for host in networks]
    table = pd.concat(tables, ignore_index=True)
    if not (~table["is_main"]).any():
        raise LoafingError("none of the networks fits inside another (same number of stages, no stage deeper)")
    return table


def _correct(loaded: LoadedModel, plans: list[Plan], data: DataSplits, labels: torch.Tensor, evaluation: EvalConfig,
             progress: bool) -> torch.Tensor:
    """Whether each plan of `loaded` classifies each test image right ([plans, N]), BN-recalibrated as measure does."""
    device = evaluation_device(evaluation)
    _, predicted = evaluate_plans(loaded.model.to(device), plans, make_loader(data.test, evaluation.batch_size),
                                  calibration_loader(loaded.model, data, evaluation), device, progress,
                                  predictions=True, reference=trained_plan(loaded))
    return predicted == labels.unsqueeze(0)


def loafing_gaps(networks: Sequence[LoadedModel], data: DataSplits, evaluation: EvalConfig, *,
                 progress: bool = True) -> pd.DataFrame:
    """For every host network (of any method) and every conventionally trained network whose architecture fits
    inside it: that architecture's top-1 inside the host and alone, and the gap (inside − alone) with its 95% CI
    paired over the test images (each image scored by both networks). The CI is the test set's uncertainty, not
    training's: one seed of each network says nothing about how the gap varies from run to run. Empty when no
    conventionally trained network fits inside another."""
    alone = [n for n in networks if method_style(str(n.config.get("method")))["method_role"] == "conventional"]
    labels = torch.cat([y for _, y in make_loader(data.test, evaluation.batch_size)])
    own = {id(n): _correct(n, [trained_plan(n) or n.model.layout.main_plan], data, labels, evaluation, progress)[0]
           for n in alone}
    rows = []
    for host in networks:
        if trained_plan(host) is not None:
            continue
        fitting = {plan.depths: plan for plan in inside_plans(host, alone)[1:]}  # [0] is the host's own network
        pairs = [(other, fitting[architecture_depths(other)]) for other in alone
                 if other is not host and architecture_depths(other) in fitting]
        if not pairs:
            continue
        inside = _correct(host, [plan for _, plan in pairs], data, labels, evaluation, progress)
        for (other, plan), correct in zip(pairs, inside):
            differences = correct.double() - own[id(other)].double()
            n = differences.numel()
            gap = 100 * differences.mean().item()
            half = 100 * Z_95 * differences.std().item() / math.sqrt(n) if n > 1 else math.nan
            depths = plan.depths_str
            table = pd.DataFrame([{
                "depths": depths,
                "architecture": architecture_names(host.config["model"], [depths], host.config.get("model_args"))[0],
                "plan": str(plan), "alone_run": str(other.config.get("run") or ""),
                "top1_inside": 100 * correct.double().mean().item(),
                "top1_alone": 100 * own[id(other)].double().mean().item(), "gap": gap, "gap_ci_low": gap - half,
                "gap_ci_high": gap + half, "n_examples": n, "granularity": host.model.granularity,
                **calibration_columns(host.model, data, evaluation)}])
            rows.append(with_run_identifiers(table, run_identifiers(host.config, data.name)))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
