"""Fig. 1 and Tables r5/r6 as a study: every smaller network of a family measured as a sub-network inside every
bigger one (the host's ordered plan with the smaller network's per-stage depths, BN-recalibrated), and every
network on its own ("trained alone"), as one tidy measure table.
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd
import torch

from loafing.checkpoint import LoadedModel
from loafing.data import DataSplits
from loafing.errors import LoafingError
from loafing.measure import measure_plans, trained_plan
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


def inside_vs_alone(networks: Sequence[LoadedModel], data: DataSplits, *, calib_size: int, seed: int,
                    batch_size: int, device: torch.device, progress: bool = True) -> pd.DataFrame:
    """The measure table of every network on its own and of every smaller one inside it (`space` "inside")."""
    if len(networks) < 2:
        raise LoafingError("give at least two checkpoints: a smaller network and one it fits inside")
    tables = [measure_plans(host, inside_plans(host, networks), data, calib_size=calib_size, recalibrate=True,
                            seed=seed, batch_size=batch_size, device=device, progress=progress, space="inside")
              for host in networks]
    table = pd.concat(tables, ignore_index=True)
    if not (~table["is_main"]).any():
        raise LoafingError("none of the networks fits inside another (same number of stages, no stage deeper)")
    return table
