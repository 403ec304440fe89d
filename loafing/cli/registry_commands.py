"""`loafing models` and `loafing methods`: what the registries hold."""
from __future__ import annotations

import click

from loafing.cli.options import MODEL_ARG, spec_option
from loafing.config import TrainConfig
from loafing.errors import LoafingError
from loafing.options import option_specs


@click.command()
@click.argument("name", required=False)
@MODEL_ARG
@spec_option(next(s for s in option_specs(TrainConfig) if s.name == "granularity"))
def models(name: str | None, model_args: dict, granularity: str) -> None:
    """List the models and the timm / torchvision families; with NAME, one model's stages and blocks.

    Listing builds no network: a registered model's stages come from its spec. NAME (a registered model, or
    timm:<name> / torchvision:<name> with its --model-arg) is built once on the meta device; with --granularity
    unit, its steps are its transformer blocks' attention and MLP units."""
    from loafing.models import MODELS, get_spec

    if name is not None:
        _describe(name, get_spec(name, model_args, granularity))
        return
    if model_args or granularity != "block":
        raise LoafingError("--model-arg and --granularity describe one network: name it, e.g. `loafing models "
                           "timm:vit_tiny_patch16_224 --granularity unit`")
    for name, spec in MODELS.items():
        _summary(spec)
    from loafing.models.families import FAMILIES

    click.echo("\nAny network of these timm / torchvision families, as --model timm:<name> or torchvision:<name> "
               "with its builder's keyword arguments as --model-arg key=value (`loafing models timm:<name>` shows "
               "its stages):")
    for family in FAMILIES:
        units = (f"; residual units per block: {', '.join(family.units)}"
                 f"{' (--granularity unit)' if len(family.units) > 1 else ''}; branch alone (--method stochastic-depth, "
                 f"raw paths): {'yes' if family.adds_last else 'no'}")
        depth = f"; stochastic depth: --model-arg {family.drop_path}=P" if family.drop_path else ""
        click.echo(f"  {family.library}:{family.name} ({' '.join(family.patterns)}): {family.description}{units}"
                   f"{depth}")


LONG = 80  # characters of a main plan and its skippable blocks beyond which the listing gives ranges


def _runs_text(numbers) -> str:
    """Block numbers with consecutive runs shortened: 1, 2, 3, 5 -> '1-3, 5'."""
    runs: list[list[int]] = []
    for n in sorted(numbers):
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


def _summary(spec) -> None:
    layout = spec.layout()
    mean, std = spec.normalization
    click.echo(f"{spec.name}: {spec.description}")
    skippable = ("from the end of each stage only, keeping its first block" if layout.prefix_only
                 else sorted(layout.skippable))
    plan = str(layout.main_plan)
    if len(f"{plan}{skippable}") > LONG:  # a deep network's every block number would fill the screen: name the runs instead
        plan = "of blocks " + " | ".join(_runs_text(stage) for stage in layout.stages)
        if not layout.prefix_only:
            fixed = sorted(set().union(*layout.stages) - layout.skippable)
            skippable = f"all but {_runs_text(fixed)}" if fixed else "all"
    click.echo(f"    stages {'-'.join(map(str, layout.stage_sizes))}, main plan {plan}, skippable {skippable}")
    click.echo(f"    recipe {spec.recipe} ({spec.image_size}x{spec.image_size}), normalization mean "
               f"{[round(m, 4) for m in mean]} std {[round(s, 4) for s in std]}, classifier {spec.classifier_key}, "
               f"--width-mult {'yes' if spec.width_mult else 'no'}")


def _describe(name: str, spec) -> None:
    """One model in full: the summary, then each stage's blocks (* skippable) for a library network."""
    import torch

    from loafing.models.adapter import describe_blocks
    from loafing.models.registry import is_library_model

    _summary(spec)
    if is_library_model(name):
        with torch.device("meta"):
            model = spec.build(10, 1.0)
        if model.input_size is not None:
            click.echo(f"    takes {model.input_size}x{model.input_size} images only (--image-size {model.input_size} "
                       "where the recipe's size differs)")
        for line in describe_blocks(model):
            click.echo(f"    {line}")
        click.echo("    (* skippable: an identity shortcut around a same-shaped output)")


@click.command()
def methods() -> None:
    """List the registered training methods and their options.

    Each option with its default and help, as `loafing train --help` shows it."""
    from loafing.methods import METHODS

    for name, method in METHODS.items():
        click.echo(f"{name} ({method.label}): {method.description}")
        for option in method.options:
            kind = "" if option.kind is bool else f" {option.kind.__name__.upper()}"
            if option.choices is not None:
                kind = f" [{'|'.join(option.choices())}]"
            default = "" if option.default is None else f" [default: {option.default}]"
            click.echo(f"    {option.flag}{kind}: {option.help}{default}")
