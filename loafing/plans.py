"""Execution plans: which blocks of each stage run, in which order, and the spaces that generate them."""
from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass
from typing import Callable

from loafing.errors import LoafingError


@dataclass(frozen=True)
class Layout:
    """A network body: per stage the 1-based global indices of its blocks, and which blocks are skippable."""

    stages: tuple[tuple[int, ...], ...]
    skippable: frozenset[int]

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


@dataclass(frozen=True)
class Plan:
    """Per stage, the global block indices that run, in order. `str(plan)` is its canonical form."""

    stages: tuple[tuple[int, ...], ...]

    def __str__(self) -> str:
        return " ".join("[" + ",".join(str(b) for b in stage) + "]" for stage in self.stages)

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
        """All block indices in execution order."""
        return tuple(b for stage in self.stages for b in stage)


_STAGE_RE = re.compile(r"\[([^\[\]]*)\]")


def parse_plan(text: str) -> Plan:
    """Parse the canonical form, e.g. '[1,2] [3,5,4]', back into a Plan."""
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
        if not all(s.isdigit() for s in items):
            raise LoafingError(f"invalid plan string {text!r}: block indices must be positive integers")
        parsed.append(tuple(int(s) for s in items))
    return Plan(tuple(parsed))


def validate_plan(plan: Plan, layout: Layout) -> None:
    """Raise LoafingError unless `plan` runs only blocks of their own stage, once, keeping non-skippable ones in place."""
    if len(plan.stages) != len(layout.stages):
        raise LoafingError(
            f"plan {plan} has {len(plan.stages)} stages but the model has {len(layout.stages)}: "
            f"main plan is {layout.main_plan}"
        )
    for s, (run, blocks) in enumerate(zip(plan.stages, layout.stages), start=1):
        foreign = [b for b in run if b not in blocks]
        if foreign:
            raise LoafingError(
                f"plan {plan}: block {foreign[0]} is not in stage {s}, whose blocks are {list(blocks)}"
            )
        if len(set(run)) != len(run):
            raise LoafingError(f"plan {plan}: stage {s} runs a block more than once")
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


SPACES: dict[str, Callable[[Layout], list[Plan]]] = {"ordered": ordered_space, "uniform": uniform_space}


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

