"""Study definitions: presets of `loafing reproduce`, one module per family of studies, registered by name."""
from __future__ import annotations

from typing import Callable

from loafing.errors import LoafingError
from loafing.reproduce import Preset

PRESETS: dict[str, Callable[[], Preset]] = {}


def register_preset(name: str, build: Callable[[], Preset]) -> None:
    """Add a preset: a name and a function that builds its study definition."""
    if name in PRESETS:
        raise ValueError(f"preset {name!r} is already registered")
    PRESETS[name] = build


def get_preset(name: str) -> Preset:
    """The preset called `name`; unknown names are rejected with the valid ones."""
    if name not in PRESETS:
        raise LoafingError(f"unknown preset {name!r}; valid choices: {', '.join(PRESETS)}")
    return PRESETS[name]()


def presets() -> dict[str, Preset]:
    """Every preset by name."""
    return {name: build() for name, build in PRESETS.items()}


from loafing.analyses import appendix, paper  # noqa: E402,F401  (register the paper's presets)
