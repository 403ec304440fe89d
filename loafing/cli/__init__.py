"""The `loafing` command line: thin wrappers over the library; errors are one line and exit code 2.

Each command group lives in its own module, imported only when one of its commands runs (or shows its help), so
`loafing --help` imports neither torch nor the commands. Options come from the config dataclasses (TrainConfig,
the methods' own options, EvalConfig) and choices from the registries, read when they are used.
"""
from __future__ import annotations

import importlib
import os
import sys
import warnings

import click

from loafing.errors import AgreedError, LoafingError, LoafingWarning

# name -> (module:attribute of the command, the first sentence of its help, which `loafing --help` shows without
# importing it; tests/test_cli.py checks that each is the command's own)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("loafing.cli.train_commands:train", "Train a network with a registered method."),
    "measure": ("loafing.cli.eval_commands:measure",
                "Evaluate every sub-network of a checkpoint (BN-recalibrated) into a tidy CSV."),
    "destruct": ("loafing.cli.eval_commands:destruct",
                 "Delete or permute layers and measure the accuracy drop of every destroyed network."),
    "influence": ("loafing.cli.eval_commands:influence",
                  "Block influence (1 - cosine of a block's input and output) and each block's delete-one top-1 drop."),
    "inside-vs-alone": ("loafing.cli.eval_commands:inside_vs_alone",
                        "Each smaller network inside each bigger one (BN-recalibrated) vs each on its own."),
    "reproduce": ("loafing.cli.study_commands:reproduce",
                  "Run a study end to end: training, measure, destruct, KL trajectories, figures."),
    "figures": ("loafing.cli.study_commands:figures",
                "Make every figure and table of the paper whose data the CSVs hold."),
    "models": ("loafing.cli.registry_commands:models",
               "List the models and the timm / torchvision families; with NAME, one model's stages and blocks."),
    "methods": ("loafing.cli.registry_commands:methods", "List the registered training methods and their options."),
}


class LazyGroup(click.Group):
    """A click group whose commands are imported from their modules when one is run or asked for its help."""

    def __init__(self, *args, lazy: dict[str, tuple[str, str]], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in self.lazy:
            module, _, attribute = self.lazy[name][0].partition(":")
            self.add_command(getattr(importlib.import_module(module), attribute), name)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names))  # as click.Group lays out its commands
        rows = [(name, self.commands[name].get_short_help_str(limit) if name in self.commands
                 else click.Command(name, help=self.lazy[name][1]).get_short_help_str(limit)) for name in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"],
                                                            "show_default": True})
def cli() -> None:
    """Measure and fix loafing of residual networks (stimulative training, NeurIPS'22)."""


def one_line(message: str) -> str:
    """An error message as one line; for an error raised in a DataLoader worker (which PyTorch wraps in the
    worker's traceback), its own message."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if "Original Traceback" in message and lines:
        return lines[-1].split("LoafingError: ", 1)[-1]
    return " ".join(lines)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """LoafingWarnings as one line on stderr; other warnings as Python shows them."""
    if issubclass(category, LoafingWarning):
        click.echo(f"loafing: warning: {message}", err=True)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning


def main() -> None:
    """Console entry point: run the CLI, turning bad input into one line on stderr and exit code 2."""
    warnings.showwarning = _show_warning
    try:
        rc = cli.main(standalone_mode=False)
    except AgreedError:  # rank 0 of the torchrun processes says it
        sys.exit(2)
    except LoafingError as err:
        rank = os.environ.get("RANK", "0")  # torchrun's; another rank's own error says whose it is
        click.echo(f"loafing: error{f' (rank {rank})' if rank != '0' else ''}: {one_line(str(err))}", err=True)
        sys.exit(2)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("loafing: aborted", err=True)
        sys.exit(130)
    except OSError as err:  # a full disk, a folder that became unwritable: after the checks, during the work
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        click.echo(f"loafing: error: {err.strerror or type(err).__name__}{where}", err=True)
        sys.exit(2)
    except click.ClickException as err:
        click.echo(f"loafing: error: {one_line(err.format_message())}", err=True)  # click lists choices on lines
        sys.exit(2)
    except RuntimeError as err:  # torch.OutOfMemoryError (a GPU's) is one; the CPU allocator's is a plain one
        if type(err).__name__ != "OutOfMemoryError" and "can't allocate memory" not in str(err):
            raise
        click.echo("loafing: error: out of memory: lower --batch-size (or the image size, or the model's width)",
                   err=True)
        sys.exit(2)
    sys.exit(rc if isinstance(rc, int) else 0)
