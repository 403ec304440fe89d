"""`loafing train`: its options are TrainConfig's fields and every registered method's own options."""
from __future__ import annotations

import dataclasses

import click

import loafing.methods  # noqa: F401  (registers the built-in methods, whose options `train` offers)
from loafing.cli.options import MODEL_ARG, spec_options, typed_options
from loafing.config import check_typed_train_options, make_train_config, train_option_specs
from loafing.errors import LoafingError


def given_options(options: dict) -> list[str]:
    """The flags of `options` that were typed on the command line (not left at their defaults)."""
    return ["--" + name.replace("_", "-") for name in typed_options(options)]


@click.command()
@spec_options(train_option_specs)
@MODEL_ARG
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False), default=None,
              help="Continue the interrupted run in this folder (its saved configuration is used).")
@click.option("--overwrite", is_flag=True, help="Replace a run already in --out.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(overwrite: bool, quiet: bool, resume_dir: str | None, **options) -> None:
    """Train a network with a registered method.

    Writes checkpoint.pt, train_log.csv and config.json to --out, and live TensorBoard curves to --out/tensorboard
    where the tensorboard package is installed (pip install 'loafing[tensorboard]')."""
    from loafing.run_state import load_config
    from loafing.train import train as run_training

    if resume_dir:
        ignored = given_options(options)
        if ignored:
            raise LoafingError(f"--resume continues the run as it was configured; {', '.join(ignored)} would be "
                               "ignored: drop them (or train a new run with --out)")
        config = dataclasses.replace(load_config(resume_dir), out=resume_dir)
    else:
        config = make_train_config(options)
        check_typed_train_options(config, typed_options(options))  # a typed option nothing reads hides a mistake
        from loafing.models import get_spec

        # An unknown network, a bad --model-arg or a view it has not, before the run folder.
        get_spec(config.model, config.model_args, config.granularity)
    log = run_training(config, progress=not quiet, overwrite=overwrite, resume=bool(resume_dir))
    if log.empty:  # a torchrun process other than rank 0: rank 0 reports
        return
    last = log.iloc[-1]
    how = " (BN recalibrated)" if last["test_top1_recalibrated"] != last["test_top1_running_bn"] else ""
    click.echo(f"{config.method} {config.model}: epoch {int(last['epoch'])}, test top-1 "
               f"{last['test_top1_recalibrated']:.2f}%{how}, {log['seconds'].sum():.0f} s training -> {config.out}")
