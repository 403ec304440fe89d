"""`loafing models` and `loafing methods`: what the registries hold."""
from __future__ import annotations

import click


@click.command()
def models() -> None:
    """List the registered models: stages, skippable blocks, input recipe, normalization, classifier key.

    Builds no network: a model's stages come from its spec."""
    from loafing.models import MODELS

    for name, spec in MODELS.items():
        layout = spec.layout()
        mean, std = spec.normalization
        click.echo(f"{name}: {spec.description}")
        skippable = ("from the end of each stage only, keeping its first block" if layout.prefix_only
                     else sorted(layout.skippable))
        click.echo(f"    stages {'-'.join(map(str, layout.stage_sizes))}, main plan {layout.main_plan}, "
                   f"skippable {skippable}")
        click.echo(f"    recipe {spec.recipe} ({spec.image_size}x{spec.image_size}), normalization mean "
                   f"{list(mean)} std {list(std)}, classifier {spec.classifier_key}, --width-mult "
                   f"{'yes' if spec.width_mult else 'no'}")


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
