"""Option plumbing of the command line: click options generated from `OptionSpec`s (their help, defaults, choices
and ranges), registry choices read when they are needed, and the one-line report of written figures."""
from __future__ import annotations

import importlib
from typing import Any, Callable, Iterable, Mapping, Sequence

import click

from loafing.options import AT_LEAST_1, SEED, OptionSpec, Range, check_choice, check_number


class RegistryChoice(click.Choice):
    """click.Choice over a registry's names, read when they are needed (so later registrations count)."""

    def __init__(self, what: str, names: Callable[[], Sequence[str]]) -> None:
        self.what, self.names, self.case_sensitive = what, names, True

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(self.names())

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        check_choice(self.what, value, self.names())  # the registry's own list: it may accept more than it lists
        return value


class CheckedNumber(click.ParamType):
    """An int or float that must be finite and in a range; out-of-range values get the config's one-line error."""

    def __init__(self, kind: type, allowed: Range | None) -> None:
        self.kind, self.allowed = kind, allowed
        self.name = kind.__name__

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = (click.INT if self.kind is int else click.FLOAT).convert(value, param, ctx)
        check_number(param.opts[0] if param else "value", number, self.allowed)
        return number


def _model_args(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> dict[str, Any]:
    from loafing.models.adapter import parse_model_args

    return parse_model_args(value) if value else {}


# A timm / torchvision network's builder arguments, as TrainConfig.model_args holds them.
MODEL_ARG = click.option("--model-arg", "model_args", multiple=True, callback=_model_args, metavar="KEY=VALUE",
                         help="A keyword argument of a timm / torchvision network's builder (repeatable), e.g. "
                         "img_size=32; a value is read as true/false, an int, a float, a comma-separated list of "
                         "these, or text.")

POSITIVE_INT = CheckedNumber(int, AT_LEAST_1)
SEED_INT = CheckedNumber(int, SEED)


def typed_options(options: Iterable[str]) -> list[str]:
    """The names among `options` that were typed on the current command line (not left at their defaults)."""
    context = click.get_current_context()
    return [name for name in options if context.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE]


def registry_choice(what: str, module: str, attribute: str) -> RegistryChoice:
    """A RegistryChoice over `module.attribute`'s keys, imported only when the names are needed."""
    return RegistryChoice(what, lambda: list(getattr(importlib.import_module(module), attribute)))


def spec_option(spec: OptionSpec, flags: Sequence[str] = ()) -> Callable:
    """The click option of one OptionSpec (`flags`: its flags, if not just `spec.flag`); a boolean that is on by
    default is the pair --name/--no-name."""
    flags = tuple(flags) or (spec.flag,)
    if spec.kind is bool:
        declarations = tuple(f"{f}/--no-{f[2:]}" for f in flags) if spec.default else flags
        return click.option(*declarations, spec.name, is_flag=True, default=spec.default, help=spec.help)
    if spec.choices is not None:
        param_type: click.ParamType = RegistryChoice(spec.what, spec.choices)
    elif spec.kind in (int, float):
        param_type = CheckedNumber(spec.kind, spec.range)
    else:
        param_type = click.STRING
    return click.option(*flags, spec.name, type=param_type, default=spec.default, help=spec.help)


def spec_options(specs: Callable[[], Iterable[OptionSpec]] | Iterable[OptionSpec],
                 flags: Mapping[str, Sequence[str]] | None = None) -> Callable:
    """A decorator adding the click options of option specs, in their order (`flags`: other flags by name)."""
    def decorate(command: Callable) -> Callable:
        for spec in reversed(list(specs() if callable(specs) else specs)):
            command = spec_option(spec, (flags or {}).get(spec.name, ()))(command)
        return command
    return decorate


def apply(options: Sequence[Callable], command: Callable) -> Callable:
    """`command` with click options added, the first of `options` shown first."""
    for option in reversed(options):
        command = option(command)
    return command


def echo_figures(outcomes) -> None:
    """One line per figure drawn (its files), then one line saying what was drawn and what was skipped, and why."""
    from loafing.figures import summary_line

    for outcome in outcomes:
        label = f"{outcome.name} ({outcome.group})" if outcome.group else outcome.name
        if not outcome.skipped:
            click.echo(f"  {label:8s} {', '.join(str(p) for p in outcome.paths)}")
    click.echo(summary_line(outcomes))
