"""Execution plans: which blocks of each stage run, in which order, and the spaces that generate them.

A step of a plan is a 1-based block index: `b` runs block b as it is (residual branch plus shortcut),
`-b` runs only its residual branch, without the shortcut (written `5b`): Veit et al.'s unraveled paths,
which ST's `raw` sampling rule draws.
"""
from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass
from typing import Callable

from loafing.errors import LoafingError


# What a step of a plan is: a residual block, or one of a transformer block's residual units (attention, MLP), which
# library networks of families with units offer (`loafing.models.units`); steps are numbered 1..n over the body.
GRANULARITIES = ("block", "unit")


@dataclass(frozen=True)
class Layout:
    """A network body: per stage the 1-based global indices of its blocks, and which blocks are skippable."""

    stages: tuple[tuple[int, ...], ...]
    skippable: frozenset[int]
    # Blocks can only be dropped from the end of a stage, in order (a DenseNet layer needs every earlier one's
    # features): a plan keeps a prefix of each stage.
    prefix_only: bool = False

    @property
    def stage_sizes(self) -> tuple[int, ...]:
        """Number of blocks per stage."""
        return tuple(len(s) for s in self.stages)

    @property
    def n_blocks(self) -> int:
        """Number of blocks in the body."""
        return sum(self.stage_sizes)

    @property
    def main_plan(self) -> Plan:
        """The plan that runs every block in its original order."""
        return Plan(self.stages)


def split_at_fixed_blocks(layout: Layout) -> Layout:
    """`layout` with each block that cannot be skipped, other than its stage's first, starting a stage of its own (a
    stride or width change inside a library's stage), so that only a stage's first block may be unskippable and an
    ordered sub-network (per stage its first d blocks) keeps every such block. Prefix-only layouts are kept as they are
    (a DenseNet's stage is shortened from its end); a stage with no blocks is dropped."""
    if layout.prefix_only:
        return layout
    stages: list[list[int]] = []
    for blocks in layout.stages:
        for b in blocks:
            if b == blocks[0] or b not in layout.skippable:
                stages.append([])
            stages[-1].append(b)
    return Layout(tuple(tuple(s) for s in stages), layout.skippable)


@dataclass(frozen=True)
class Plan:
    """Per stage, the steps that run, in order (b: block b; -b: its branch only). `str(plan)` is its canonical form."""

    stages: tuple[tuple[int, ...], ...]

    def __str__(self) -> str:
        return " ".join("[" + ",".join(step_text(b) for b in stage) + "]" for stage in self.stages)

    @property
    def depths(self) -> tuple[int, ...]:
        """Number of blocks run per stage."""
        return tuple(len(s) for s in self.stages)

    @property
    def depths_str(self) -> str:
        """Per-stage block counts joined by '-', as the CSVs carry them."""
        return "-".join(str(d) for d in self.depths)

    @property
    def n_blocks(self) -> int:
        """Total number of blocks run."""
        return sum(self.depths)

    def sequence(self) -> tuple[int, ...]:
        """All steps in execution order."""
        return tuple(b for stage in self.stages for b in stage)


def step_text(step: int) -> str:
    """A step as plans write it: '5' for block 5, '5b' for block 5's residual branch alone."""
    return f"{-step}b" if step < 0 else str(step)


_STAGE_RE = re.compile(r"\[([^\[\]]*)\]")
_STEP_RE = re.compile(r"(\d+)(b?)")


def parse_plan(text: str) -> Plan:
    """Parse the canonical form, e.g. '[1,2] [3,5,4]' or '[1b] [3,5b]', back into a Plan."""
    stripped = text.strip()
    stages = _STAGE_RE.findall(stripped)
    if not stages or _STAGE_RE.sub("", stripped).strip(" ,"):
        raise LoafingError(
            f"invalid plan string {text!r}: expected one bracketed list of block indices per stage, "
            "e.g. '[1,2] [3,4,5]'"
        )
    parsed = []
    for stage in stages:
        items = [s.strip() for s in stage.split(",") if s.strip()]
        matches = [_STEP_RE.fullmatch(s) for s in items]
        if not all(matches) or any(int(m[1]) == 0 for m in matches):
            raise LoafingError(f"invalid plan string {text!r}: a step is a positive block index, optionally "
                               "followed by 'b' (its residual branch alone), e.g. '3' or '3b'")
        parsed.append(tuple(-int(m[1]) if m[2] else int(m[1]) for m in matches))
    return Plan(tuple(parsed))


def validate_plan(plan: Plan, layout: Layout) -> None:
    """Raise LoafingError unless `plan` runs only blocks of their own stage, once, keeping non-skippable ones in
    place and whole (only a skippable block, whose shortcut is the identity, can run its branch alone)."""
    if len(plan.stages) != len(layout.stages):
        raise LoafingError(
            f"plan {plan} has {len(plan.stages)} stages but the model has {len(layout.stages)}: "
            f"main plan is {layout.main_plan}"
        )
    for s, (steps, blocks) in enumerate(zip(plan.stages, layout.stages), start=1):
        branch_only = [-b for b in steps if b < 0 and -b not in layout.skippable and -b in blocks]
        if branch_only:
            raise LoafingError(f"plan {plan}: block {branch_only[0]} is not skippable; its branch cannot run "
                               "without its shortcut")
        run = tuple(abs(b) for b in steps)
        foreign = [b for b in run if b not in blocks]
        if foreign:
            raise LoafingError(
                f"plan {plan}: block {foreign[0]} is not in stage {s}, whose blocks are {list(blocks)}"
            )
        if len(set(run)) != len(run):
            raise LoafingError(f"plan {plan}: stage {s} runs a block more than once")
        if layout.prefix_only and steps != blocks[:len(steps)]:
            raise LoafingError(f"plan {plan}: stage {s} must keep its first blocks in order (a prefix of "
                               f"{list(blocks)}); this model's blocks need every earlier block of their stage")
        for b in blocks:
            if b in layout.skippable:
                continue
            if b not in run:
                raise LoafingError(f"plan {plan}: block {b} is not skippable and cannot be dropped")
            pos = run.index(b)
            if any(x > b for x in run[:pos]) or any(x < b for x in run[pos + 1 :]):
                raise LoafingError(f"plan {plan}: block {b} is not skippable and cannot be moved")


def ordered_plan(layout: Layout, depths: tuple[int, ...]) -> Plan:
    """The ordered residual sub-network that keeps the first `depths[s]` blocks of stage s."""
    return Plan(tuple(blocks[:d] for blocks, d in zip(layout.stages, depths)))


def ordered_space(layout: Layout) -> list[Plan]:
    """Every ordered residual sub-network: per stage the first d blocks, 1 <= d <= n, independently."""
    ranges = [range(1, n + 1) for n in layout.stage_sizes]
    return [ordered_plan(layout, depths) for depths in itertools.product(*ranges)]


def uniform_space(layout: Layout) -> list[Plan]:
    """Ordered sub-networks of the same depth k in every stage (capped at a stage's size), k = 1..max n."""
    plans = [
        ordered_plan(layout, tuple(min(k, n) for n in layout.stage_sizes))
        for k in range(1, max(layout.stage_sizes) + 1)
    ]
    return list(dict.fromkeys(plans))


def _kept_subsets(layout: Layout, branch_only: bool) -> list[Plan]:
    """Every plan that keeps, per stage, any subset of the skippable blocks in order (and every other block)."""
    options = [((), (-b if branch_only else b,)) if b in layout.skippable else ((b,),)
               for b in layout.main_plan.sequence()]
    stage_of = {b: s for s, blocks in enumerate(layout.stages) for b in blocks}
    plans = []
    for choice in itertools.product(*options):
        stages: list[list[int]] = [[] for _ in layout.stages]
        for block, kept in zip(layout.main_plan.sequence(), choice):
            stages[stage_of[block]].extend(kept)
        plans.append(Plan(tuple(tuple(stage) for stage in stages)))
    return plans


# Spaces of 2^(skippable blocks) plans are enumerated only up to this size (resnet20-cifar: 2^7, mobilenet: 2^9).
SPACE_LIMIT = 4096


def _check_space_size(layout: Layout, name: str) -> None:
    if layout.prefix_only:
        raise LoafingError(f"the {name} space drops blocks from inside a stage; this model's stages can only be "
                           "shortened from the end (--space ordered or uniform)")
    size = 2 ** len(layout.skippable)
    if size > SPACE_LIMIT:
        raise LoafingError(f"the {name} space of this model has 2^{len(layout.skippable)} plans, more than "
                           f"{SPACE_LIMIT} can be measured; give plans with --plan or use --space ordered")


def stochastic_space(layout: Layout) -> list[Plan]:
    """Every stochastic residual sub-network: per stage any subset of the skippable blocks, order kept."""
    _check_space_size(layout, "stochastic")
    return _kept_subsets(layout, branch_only=False)


def raw_space(layout: Layout) -> list[Plan]:
    """Every raw (unraveled) path: each skippable block contributes its branch alone or nothing (its identity)."""
    _check_space_size(layout, "raw")
    return _kept_subsets(layout, branch_only=True)


# The official code's `space3` for ResNet-50 (stages 3-4-6-3): per stage, how many blocks may be dropped from its end.
SPACE3_DROPS = (0, 1, 3, 0)


def space3_depths(layout: Layout) -> list[tuple[int, ...]]:
    """Per stage the depths `space3` allows: stages 1 and 4 whole, stage 2 minus at most 1 block, stage 3 minus at
    most 3 (never below one block); defined for four-stage networks only."""
    if len(layout.stages) != len(SPACE3_DROPS):
        raise LoafingError(f"the space3 space is defined for four-stage networks (ResNet-50's: at most 1 block "
                           f"dropped in stage 2 and 3 in stage 3, stages 1 and 4 never); this model has "
                           f"{len(layout.stages)} stages; choose another space or sampling rule")
    return [tuple(range(max(1, n - d), n + 1)) for n, d in zip(layout.stage_sizes, SPACE3_DROPS)]


def space3_space(layout: Layout) -> list[Plan]:
    """The official code's restricted inter-stage space: ordered plans within `space3_depths`."""
    return [ordered_plan(layout, depths) for depths in itertools.product(*space3_depths(layout))]


SPACES: dict[str, Callable[[Layout], list[Plan]]] = {
    "ordered": ordered_space, "uniform": uniform_space, "stochastic": stochastic_space, "raw": raw_space,
    "space3": space3_space}


def get_space(name: str, layout: Layout) -> list[Plan]:
    """The plans of the named sampling space."""
    if name not in SPACES:
        raise LoafingError(f"unknown space {name!r}; valid choices: {', '.join(SPACES)}")
    return SPACES[name](layout)


def restricted_ordered_space(layout: Layout, size: int, seed: int) -> list[Plan]:
    """A seeded subset of `size` ordered plans: the smallest and the main plan, plus size - 2 drawn uniformly."""
    full = ordered_space(layout)
    if not 2 <= size <= len(full):
        raise LoafingError(f"--space-size must be between 2 and {len(full)} for this model, got {size}")
    chosen = {0, len(full) - 1} | set(random.Random(seed).sample(range(1, len(full) - 1), size - 2))
    return [full[i] for i in sorted(chosen)]


def sample_ordered_plan(layout: Layout, rng: random.Random) -> Plan:
    """The ST sampler: per stage a depth drawn uniformly from 1..n, independently per stage."""
    return ordered_plan(layout, tuple(rng.randint(1, n) for n in layout.stage_sizes))


def _sample_kept(layout: Layout, rng: random.Random, branch_only: bool) -> Plan:
    stages = []
    for blocks in layout.stages:
        kept = []
        for b in blocks:
            if b not in layout.skippable:
                kept.append(b)
            elif rng.random() < 0.5:
                kept.append(-b if branch_only else b)
        stages.append(tuple(kept))
    return Plan(tuple(stages))


def sample_stochastic_plan(layout: Layout, rng: random.Random) -> Plan:
    """Stochastic residual sampling (Sec. 3.3): each skippable block kept or skipped with probability 1/2."""
    return _sample_kept(layout, rng, branch_only=False)


def sample_raw_plan(layout: Layout, rng: random.Random) -> Plan:
    """Raw sampling (Sec. 3.3): each skippable block runs its branch alone or its identity, with probability 1/2."""
    return _sample_kept(layout, rng, branch_only=True)


def sample_space3_plan(layout: Layout, rng: random.Random) -> Plan:
    """The official code's space3 sampler: per stage a depth drawn uniformly from those `space3_depths` allows."""
    return ordered_plan(layout, tuple(rng.choice(depths) for depths in space3_depths(layout)))


# ST's sampling rules (`--sampling`): ordered and space3 draw a depth per stage uniformly (the paper's Alg. 1,
# the official code's restricted space); the other two draw every plan of their space with equal probability.
SAMPLING_RULES: dict[str, Callable[[Layout, random.Random], Plan]] = {
    "ordered": sample_ordered_plan, "stochastic": sample_stochastic_plan, "raw": sample_raw_plan,
    "space3": sample_space3_plan}
# The rules whose plans keep a prefix of each stage (what a prefix-only model, a DenseNet, can run).
ORDERED_RULES = ("ordered", "space3")

