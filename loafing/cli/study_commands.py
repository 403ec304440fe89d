"""`loafing reproduce` (a study end to end) and `loafing figures` (the paper's figures from tidy CSVs)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import click

from loafing.cli.options import POSITIVE_INT, RegistryChoice, echo_figures, registry_choice
from loafing.errors import LoafingError


def _study_names() -> list[str]:
    from loafing.studies import study_names
    return study_names()


@click.command()
@click.option("--study", "study_file", type=click.Path(dir_okay=False), default=None,
              help="A study file, e.g. analyses/quick.toml.")
@click.option("--preset", type=RegistryChoice("preset", _study_names), default=None,
              help="A built-in study: analyses/NAME.toml.")
@click.option("--data-dir", default=None, help="Folder holding the data set (paper studies).")
@click.option("--out", type=str, default=None,
              help="Folder for runs/, results/ and figures/ [default: reproduce/STUDY].")
@click.option("--device", default="auto", help="auto | cpu | cuda | cuda:N.")
@click.option("--jobs", type=POSITIVE_INT, default=None,
              help="Runs trained in parallel [default: up to 4 on CPU, each with its share of the cores; 1 on GPU].")
@click.option("--dry-run", is_flag=True, help="List the runs and their rough cost; train nothing.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def reproduce(study_file: str | None, preset: str | None, data_dir: str | None, out: str | None, device: str,
              jobs: int | None, dry_run: bool, quiet: bool) -> None:
    """Run a study end to end: training, measure, destruct, KL trajectories, figures.

    The study is a file (--study) or a built-in one (--preset)."""
    from loafing.distributed import require_one_process
    from loafing.io import check_output_folder
    from loafing.reproduce import dry_run_text, reproduce as run_study
    from loafing.signals import Stopped, stopping_on_signals
    from loafing.studies import builtin_study, load_study

    require_one_process("`loafing reproduce`")
    if (study_file is None) == (preset is None):
        raise LoafingError("give exactly one of --study PATH (a study file) and --preset NAME (a built-in study)")
    study = load_study(study_file) if study_file else builtin_study(preset)
    if dry_run:
        click.echo(dry_run_text(study))
        return
    out = str(check_output_folder(out or Path("reproduce") / study.name))
    start = time.perf_counter()
    try:
        with stopping_on_signals():  # SIGTERM, SIGHUP: the runs and their worker processes stop, as on Ctrl-C
            summary, outcomes = run_study(study, out, device=device, jobs=jobs, data_dir=data_dir, progress=not quiet)
    except Stopped as stop:
        click.echo(f"loafing: stopped by {stop}; the same command resumes the study", err=True)
        raise click.exceptions.Exit(128 + stop.signum) from None
    columns = ["run", "trained", "main_top1", "sub_mean", "sub_std", "sub_min", "train_s"]
    if len(summary):  # a study of foreign checkpoints trains nothing
        shown = summary[[c for c in columns if c in summary]]
        click.echo(shown.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    click.echo(f"tidy CSVs in {Path(out) / 'results'}; figures:")
    echo_figures(outcomes)
    click.echo(f"{study.name}: done in {time.perf_counter() - start:.0f} s")


@click.command()
@click.option("--results", "results_dir", type=click.Path(file_okay=False), default="results/quick",
              help="Folder of tidy CSVs, each recognised by its columns whatever its name (measure.csv, ct.csv, ...).")
@click.option("--out", type=str, default="figures/quick", help="Folder for the PNGs, the tables and index.html.")
@click.option("--only", multiple=True, type=registry_choice("figure", "loafing.figures", "FIGURES"),
              help="Make only these figures (repeatable), e.g. --only fig4.")
def figures(results_dir: str, out: str, only: tuple[str, ...]) -> None:
    """Make every figure and table of the paper whose data the CSVs hold.

    Says which were skipped and why; a folder that holds files but gives nothing to draw is an error."""
    from loafing.figures import make_figures, summary_line
    from loafing.io import check_output_folder

    if os.environ.get("WORLD_SIZE", "1") != "1":  # torchrun's; only then the (torch) check of loafing.distributed
        from loafing.distributed import require_one_process
        require_one_process("`loafing figures`")
    if not Path(results_dir).is_dir():
        raise LoafingError(f"results folder {results_dir!r} does not exist")
    check_output_folder(out)
    outcomes = make_figures(results_dir, out, list(only) or None)
    if all(o.skipped for o in outcomes) and any(not p.name.startswith(".") for p in Path(results_dir).iterdir()):
        raise LoafingError(f"nothing to draw from {results_dir}: {summary_line(outcomes).split('; ', 1)[1]}")
    echo_figures(outcomes)
