"""Fig. 1 and Tables r5/r6 as a study: every smaller network of a family measured as a sub-network inside every
bigger one (the host's ordered plan with the smaller network's per-stage depths, BN-recalibrated), and every
network on its own ("trained alone"), as one tidy measure table.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from loafing.checkpoint import LoadedModel, load_model
from loafing.data import DataSplits
from loafing.errors import LoafingError
from loafing.eval_config import EvalConfig
from loafing.io import check_output_folder
from loafing.measure import check_classes, evaluation_data, measure_plans, trained_plan
from loafing.plans import Plan, ordered_plan


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


def load_family(checkpoints: Sequence[str], dataset: str | None = None, data_dir: str | None = None,
                image_size: int | None = None, unsafe_load: bool = False, *,
                out_folder: str | Path | None = None) -> tuple[list[LoadedModel], DataSplits]:
    """The checkpoints of one family (each `PATH`, loafing's own, or `MODEL=PATH`, foreign) and the data set they
    are evaluated on: the given one, else the first checkpoint's (else digits); every checkpoint must fit it.
    `out_folder`, where the results go, is refused inside the data folder the first checkpoint names."""
    networks = []
    for text in checkpoints:
        model, _, path = text.rpartition("=")
        networks.append(load_model(path, model or None, unsafe_load=unsafe_load))
    if not networks:
        raise LoafingError("give at least two checkpoints: a smaller network and one it fits inside")
    if out_folder is not None and data_dir is None:
        check_output_folder(out_folder, folders=[networks[0].config.get("data_dir")])
    data = evaluation_data(networks[0], dataset, data_dir, False, image_size)
    for loaded in networks[1:]:
        check_classes(loaded, data)
    return networks, data


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
