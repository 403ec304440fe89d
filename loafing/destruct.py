"""Destruction studies (paper Sec. 4.3, Appendix C.3): delete one, delete many, permute layers; as plans."""
from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from typing import Sequence

import pandas as pd

from loafing.checkpoint import LoadedModel
from loafing.data import DataSplits
from loafing.distributed import World
from loafing.errors import LoafingError
from loafing.eval_config import MAX_COMBOS, EvalConfig
from loafing.measure import measure_plans, trained_plan
from loafing.plans import Layout, Plan

MODES = ("delete-one", "delete-many", "permute")
# Above this many permutations in all, permutations are sampled at random instead of enumerated.
PERMUTATION_ENUMERATION_LIMIT = 100_000


@dataclass(frozen=True)
class DestroyedNetwork:
    """One destroyed network: how many layers were deleted or how many swaps permute it, and its plan."""

    n: int
    layers: str  # deleted layer indices ("4,8"), or the plan for permutations
    plan: Plan
    sampled: bool


def deletable_layers(layout: Layout) -> list[int]:
    """Layers that can be deleted: the identity-shortcut (skippable) blocks."""
    return sorted(layout.skippable)


def deletion_plan(layout: Layout, deleted: Sequence[int]) -> Plan:
    """The main plan without the `deleted` blocks."""
    gone = set(deleted)
    return Plan(tuple(tuple(b for b in stage if b not in gone) for stage in layout.stages))


def _deletion(layout: Layout, deleted: tuple[int, ...], sampled: bool) -> DestroyedNetwork:
    return DestroyedNetwork(len(deleted), ",".join(map(str, deleted)), deletion_plan(layout, deleted), sampled)


def _random_subsets(items: list[int], k: int, count: int, rng: random.Random) -> list[tuple[int, ...]]:
    seen: dict[tuple[int, ...], None] = {}
    while len(seen) < count:
        seen[tuple(sorted(rng.sample(items, k)))] = None
    return sorted(seen)


def delete_one(layout: Layout) -> list[DestroyedNetwork]:
    """Every deletable layer removed on its own."""
    return [_deletion(layout, (b,), False) for b in _require_deletable(layout)]


def delete_many(layout: Layout, max_combos: int, seed: int) -> list[DestroyedNetwork]:
    """All combinations of k deletable layers for k = 1..all; a seeded sample of `max_combos` where more."""
    layers = _require_deletable(layout)
    rng = random.Random(seed)
    out = []
    for k in range(1, len(layers) + 1):
        if math.comb(len(layers), k) <= max_combos:
            out += [_deletion(layout, c, False) for c in itertools.combinations(layers, k)]
        else:
            out += [_deletion(layout, c, True) for c in _random_subsets(layers, k, max_combos, rng)]
    return out


def swaps_needed(order: Sequence[int]) -> int:
    """Minimum number of swaps that produce `order` from its sorted order: length minus cycles."""
    position = {b: i for i, b in enumerate(sorted(order))}
    seen, cycles = set(), 0
    for start in range(len(order)):
        if start in seen:
            continue
        cycles += 1
        i = start
        while i not in seen:
            seen.add(i)
            i = position[order[i]]
    return len(order) - cycles


def _stage_permutations(stage: tuple[int, ...], skippable: frozenset[int]) -> list[tuple[int, ...]]:
    """Every order of a stage that moves only its skippable blocks (the others keep their positions)."""
    slots = [i for i, b in enumerate(stage) if b in skippable]
    orders = []
    for perm in itertools.permutations([stage[i] for i in slots]):
        order = list(stage)
        for i, b in zip(slots, perm):
            order[i] = b
        orders.append(tuple(order))
    return orders


def permute(layout: Layout, max_combos: int, seed: int) -> list[DestroyedNetwork]:
    """Every reordering of the skippable layers inside each stage, grouped by the number of swaps.

    Where one number of swaps has more than `max_combos` reorderings (or the model has more than
    PERMUTATION_ENUMERATION_LIMIT in all), a seeded random sample of them.
    """
    total = math.prod(math.factorial(sum(b in layout.skippable for b in s)) for s in layout.stages)
    rng = random.Random(seed)
    if total <= PERMUTATION_ENUMERATION_LIMIT:
        per_stage = [_stage_permutations(s, layout.skippable) for s in layout.stages]
        groups: dict[int, list[Plan]] = {}
        for stages in itertools.product(*per_stage):
            groups.setdefault(sum(swaps_needed(s) for s in stages), []).append(Plan(stages))
        exhaustive = True
    else:
        groups = _sample_permutations(layout, max_combos, rng)
        exhaustive = False
    out = []
    for n in sorted(groups):
        plans = groups[n]
        sampled = not exhaustive or len(plans) > max_combos
        if len(plans) > max_combos:
            plans = sorted(rng.sample(plans, max_combos), key=str)
        out += [DestroyedNetwork(n, str(p), p, sampled) for p in plans]
    return out


def _sample_permutations(layout: Layout, max_combos: int, rng: random.Random) -> dict[int, list[Plan]]:
    """Uniformly random in-stage reorderings of skippable blocks, bucketed by swaps, each bucket capped."""
    groups: dict[int, dict[Plan, None]] = {0: {layout.main_plan: None}}
    for _ in range(20 * max_combos * max(layout.stage_sizes)):
        stages = []
        for stage in layout.stages:
            slots = [i for i, b in enumerate(stage) if b in layout.skippable]
            moved = rng.sample([stage[i] for i in slots], len(slots))
            order = list(stage)
            for i, b in zip(slots, moved):
                order[i] = b
            stages.append(tuple(order))
        bucket = groups.setdefault(sum(swaps_needed(s) for s in stages), {})
        if len(bucket) < max_combos:
            bucket[Plan(tuple(stages))] = None
    return {n: list(plans) for n, plans in groups.items()}


def _require_deletable(layout: Layout) -> list[int]:
    layers = deletable_layers(layout)
    if not layers:
        raise LoafingError("the model has no deletable (identity-shortcut) layer to destroy")
    return layers


def _swap_counts(m: int) -> list[int]:
    """How many orders of `m` blocks take 0, 1, ..., m - 1 swaps (unsigned Stirling numbers of the first kind)."""
    cycles = [1]  # cycles[k]: orders of the blocks so far with k cycles
    for i in range(m):
        cycles = [(i * (cycles[k] if k < len(cycles) else 0)) + (cycles[k - 1] if k else 0)
                  for k in range(len(cycles) + 1)]
    return [cycles[m - s] for s in range(m)] if m else [1]


def count_destroyed(layout: Layout, mode: str, max_combos: int) -> tuple[int, bool]:
    """How many destroyed networks `destroyed_networks` gives (the intact one not counted), without making them, so
    that what a request costs is said before it is made; and whether exactly that many (permutations sampled at
    random, more than PERMUTATION_ENUMERATION_LIMIT in all, are at most that many)."""
    _check_destructible(layout, mode, max_combos)
    layers = _require_deletable(layout)
    if mode == "delete-one":
        return len(layers), True
    if mode == "delete-many":
        return sum(min(math.comb(len(layers), k), max_combos) for k in range(1, len(layers) + 1)), True
    by_swaps = [1]  # orders of the network by their number of swaps: each stage's, combined
    for stage in layout.stages:
        counts = _swap_counts(sum(b in layout.skippable for b in stage))
        combined = [0] * (len(by_swaps) + len(counts) - 1)
        for i, a in enumerate(by_swaps):
            for j, b in enumerate(counts):
                combined[i + j] += a * b
        by_swaps = combined
    return sum(min(count, max_combos) for count in by_swaps[1:]), sum(by_swaps) <= PERMUTATION_ENUMERATION_LIMIT


def _check_destructible(layout: Layout, mode: str, max_combos: int) -> None:
    if mode not in MODES:
        raise LoafingError(f"unknown mode {mode!r}; valid choices: {', '.join(MODES)}")
    if max_combos < 1:
        raise LoafingError(f"--max-combos must be at least 1, got {max_combos}")
    if layout.prefix_only:
        raise LoafingError("this model's blocks cannot be deleted or moved: each needs the features of every "
                           "earlier block of its stage (a DenseNet's dense layers), so only the end of a stage can "
                           "go, which is what `loafing measure` evaluates (its ordered sub-networks)")


def destroyed_networks(layout: Layout, mode: str, max_combos: int, seed: int) -> list[DestroyedNetwork]:
    """The destroyed networks of a mode, preceded by the intact network (n = 0)."""
    _check_destructible(layout, mode, max_combos)
    if mode == "delete-one":
        networks = delete_one(layout)
    elif mode == "delete-many":
        networks = delete_many(layout, max_combos, seed)
    else:
        _require_deletable(layout)
        networks = [d for d in permute(layout, max_combos, seed) if d.n > 0]
    intact = DestroyedNetwork(0, "" if mode != "permute" else str(layout.main_plan), layout.main_plan, False)
    return [intact] + networks


def destruct(loaded: LoadedModel, data: DataSplits, mode: str, evaluation: EvalConfig, *,
             max_combos: int = MAX_COMBOS, progress: bool = True, world: World = World()) -> pd.DataFrame:
    """Evaluate every destroyed network of `mode`; `drop` = main top-1 - top-1, both from this run (under torchrun,
    the networks shared out over the processes of `world`). The calibration seed also seeds the samples."""
    if trained_plan(loaded) is not None:
        raise LoafingError("destruct needs a run of the whole network, not a sub-network trained alone")
    networks = destroyed_networks(loaded.model.layout, mode, max_combos, evaluation.calib_seed)
    df = measure_plans(loaded, [d.plan for d in networks], data, evaluation, progress=progress,
                       world=world).drop(columns="space")
    main_top1 = df.loc[df["is_main"], "top1"].iloc[0]
    at = df.columns.get_loc("plan")
    df.insert(at, "mode", mode)
    df.insert(at + 1, "n", [d.n for d in networks])
    df.insert(at + 2, "layers", [d.layers for d in networks])
    df.insert(df.columns.get_loc("top1") + 1, "drop", main_top1 - df["top1"])
    df["sampled"] = [d.sampled for d in networks]
    return df


def summarize_drops(df: pd.DataFrame) -> pd.DataFrame:
    """Per n: number of networks and the median, min and max drop."""
    return (df.groupby("n")["drop"].agg(networks="size", median="median", min="min", max="max")
            .reset_index())
