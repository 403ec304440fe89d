"""Declaring settings once: a setting's type, default, help, range and choices (`option` fields of a config
dataclass, or an `OptionSpec`), from which the command line's options and the one-line errors of validation come."""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from loafing.errors import LoafingError


@dataclass(frozen=True)
class Range:
    """Allowed values of a number: bounds (None: unbounded), each open or closed."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    text: str = ""  # how the range reads in an error message, where the bounds alone say it badly

    def contains(self, value: float) -> bool:
        """Whether `value` lies in the range."""
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or not (value > self.high or (self.high_open and value == self.high))

    def __str__(self) -> str:
        if self.text:
            return self.text
        if self.high is None and self.low is not None:
            return f"{'greater than' if self.low_open else 'at least'} {self.low:g}"
        left = "(" if self.low_open or self.low is None else "["
        right = ")" if self.high_open or self.high is None else "]"
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"in {left}{low}, {high}{right}"


AT_LEAST_1 = Range(1)
NON_NEGATIVE = Range(0)
POSITIVE = Range(0, low_open=True)
SEED = Range(0, 2**63 - 1, text="an integer from 0 to 2^63 - 1")


def check_number(flag: str, value: float, allowed: Range | None) -> None:
    """Raise a one-line LoafingError unless `value` is finite and in `allowed`."""
    if isinstance(value, float) and not math.isfinite(value):
        raise LoafingError(f"{flag} must be a finite number, got {value}")
    if allowed is not None and not allowed.contains(value):
        raise LoafingError(f"{flag} must be {allowed}, got {value}")


def check_choice(what: str, value: str, names: list[str]) -> None:
    """Raise a one-line LoafingError naming the valid choices unless `value` is one of `names`."""
    if value not in names:
        raise LoafingError(f"unknown {what} {value!r}; valid choices: {', '.join(names)}")


# When the rest of the settings leave one unread: settings -> why (empty: it is read).
Unread = Callable[[Any], str]


def option(default: Any, help: str, *, range: Range | None = None, choices: Callable[[], list[str]] | None = None,
           what: str = "", cli: bool = True, unread: Unread | None = None) -> Any:
    """A config field with the metadata the command line and `validate_config` read (`what` names its choices;
    `unread` says why the other settings would leave it unread, for `check_typed`)."""
    return field(default=default, metadata={"help": help, "range": range, "choices": choices, "what": what,
                                            "cli": cli, "unread": unread})


@dataclass(frozen=True)
class OptionSpec:
    """One command-line option: its name, type, default, help, range and choices (what `--help` and validation read)."""

    name: str
    kind: type  # int, float, str or bool (the base type of an optional setting)
    default: Any
    help: str
    range: Range | None = None
    choices: Callable[[], list[str]] | None = None
    what: str = ""  # what the choices are called in an error message
    unread: Unread | None = None  # why the other settings would leave it unread (empty: it is read)

    @property
    def flag(self) -> str:
        """The option as typed on the command line."""
        return "--" + self.name.replace("_", "-")


def _base_type(annotation: Any) -> type:
    """int for `int | None`, and so on."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def option_specs(cls: type) -> list[OptionSpec]:
    """The command-line options of a config dataclass declared with `option(...)` fields, in declaration order."""
    hints = typing.get_type_hints(cls)
    return [OptionSpec(f.name, _base_type(hints[f.name]), f.default, f.metadata["help"], f.metadata["range"],
                       f.metadata["choices"], f.metadata["what"], f.metadata.get("unread"))
            for f in dataclasses.fields(cls) if f.metadata.get("cli", False)]


def check_value(flag: str, value: Any, allowed: Range | None, choices: Callable[[], list[str]] | None,
                what: str) -> None:
    """Raise a one-line LoafingError for a setting out of its range, not finite, or not among its choices (None:
    unset, always allowed)."""
    if value is None:
        return
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        check_number(flag, value, allowed)
    if choices is not None:
        check_choice(what, value, choices())


def check_typed(settings: Any, typed: Iterable[str], specs: Iterable[OptionSpec]) -> None:
    """Raise a one-line LoafingError for the first of `specs` typed on the command line (`typed`: their names) that
    `settings` would leave unread: a typed option that changes nothing hides a mistake."""
    typed = set(typed)
    for spec in specs:
        why = spec.unread(settings) if spec.name in typed and spec.unread is not None else ""
        if why:
            raise LoafingError(f"{spec.flag} would be ignored: {why}; drop it")
