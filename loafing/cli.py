"""The `loafing` command line: thin wrappers over the library; errors are one line and exit code 2."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from loafing.errors import LoafingError

SPACE_NAMES = ("ordered", "uniform")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def cli() -> None:
    """Measure and fix loafing of residual networks (stimulative training, NeurIPS'22)."""


@cli.command()
@click.option("--model", default="mobilenet_v3_large", help="Registered model name (see `loafing models`).")
@click.option("--width-mult", type=float, default=1.0, help="Width multiplier (mobilenet_v3_large).")
@click.option("--dataset", default="digits", help="digits | cifar10 | cifar100 | imagefolder.")
@click.option("--data-dir", default=None, help="Folder holding the data set.")
@click.option("--download", is_flag=True, help="Download the data set if missing (needs network).")
@click.option("--method", default="ct", help="ct (common training) | st (stimulative training).")
@click.option("--lam", type=float, default=1.0, help="ST: weight of the KL loss (paper Eq. 1).")
@click.option("--epochs", type=int, default=30)
@click.option("--batch-size", type=int, default=64)
@click.option("--lr", type=float, default=0.05, help="Initial learning rate (cosine decay to 0).")
@click.option("--weight-decay", type=float, default=3e-5)
@click.option("--momentum", type=float, default=0.9)
@click.option("--bn-momentum", type=float, default=None,
              help="BN running-statistics momentum; default: the model's own (MobileNetV3: 0.01).")
@click.option("--channels-last", is_flag=True,
              help="Train with NHWC activations (about 2x faster on CPU for MobileNetV3).")
@click.option("--seed", type=int, default=0)
@click.option("--device", default="auto", help="auto | cpu | cuda | cuda:N.")
@click.option("--workers", type=int, default=0, help="DataLoader worker processes.")
@click.option("--plan", default=None, help='Train this sub-network alone (CT), e.g. "[1] [3,4] [6,7,8] [10] [12,13]".')
@click.option("--space-size", type=int, default=None,
              help="ST: sample from a seeded subset of this many ordered plans (always the smallest and the main).")
@click.option("--space-seed", type=int, default=0, help="Seed choosing the restricted space's plans.")
@click.option("--st-step", default="shared",
              help="shared (common prefix once, then the blocks both networks run on the two batches stacked) | "
              "simple (two full forwards).")
@click.option("--kl-every", type=int, default=0,
              help="Every N epochs (and at the end) record each plan's KL to the main network; 0: off.")
@click.option("--kl-plans", type=int, default=None, help="Record KL for a seeded sample of this many plans.")
@click.option("--kl-probe-size", type=int, default=500, help="Test images of the fixed KL probe set.")
@click.option("--kl-calib-size", type=int, default=500, help="Training images recalibrating BN for the KL.")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Run folder to write.")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False), default=None,
              help="Continue the interrupted run in this folder (its saved configuration is used).")
@click.option("--overwrite", is_flag=True, help="Replace a run already in --out.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(overwrite: bool, quiet: bool, resume_dir: str | None, **options) -> None:
    """Train a network with CT or ST; writes checkpoint.pt, train_log.csv and config.json to --out."""
    from loafing.train import TrainConfig, load_config, train as run_training

    if resume_dir:
        config = load_config(resume_dir)
        config.out = resume_dir
    elif not options["out"]:
        raise LoafingError("--out is required (or --resume DIR)")
    else:
        config = TrainConfig(**options)
    log = run_training(config, progress=not quiet, overwrite=overwrite, resume=bool(resume_dir))
    last = log.iloc[-1]
    click.echo(f"{config.method} {config.model}: epoch {int(last['epoch'])}, test top-1 "
               f"{last['test_top1']:.2f}%, {log['seconds'].sum():.0f} s training -> {config.out}")


def evaluation_options(f):
    """Options shared by the commands that evaluate plans of a checkpoint."""
    options = [
        click.option("--ckpt", required=True, help="Checkpoint: loafing's own, akamaster CIFAR ResNet, or torchvision."),
        click.option("--model", default=None, help="Model name; required for foreign checkpoints."),
        click.option("--width-mult", type=float, default=1.0, help="Width multiplier of a foreign checkpoint."),
        click.option("--dataset", default=None,
                     help="digits | cifar10 | cifar100 | imagefolder (default: the checkpoint's, else digits)."),
        click.option("--data-dir", default=None, help="Folder holding the data set."),
        click.option("--download", is_flag=True, help="Download the data set if missing (needs network)."),
        click.option("--calib-size", type=int, default=2000, help="Training images used for BN recalibration."),
        click.option("--no-recalibrate", is_flag=True, help="Evaluate with the stored BN statistics."),
        click.option("--seed", type=int, default=0, help="Seed choosing the calibration subset (and samples)."),
        click.option("--batch-size", type=int, default=256),
        click.option("--device", default="auto", help="auto | cpu | cuda | cuda:N."),
        click.option("--out", required=True, help="CSV file to write."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def load_for_evaluation(ckpt: str, model: str | None, width_mult: float, dataset: str | None,
                        data_dir: str | None, download: bool, calib_size: int, device: str):
    """Check the shared options, then load the checkpoint and the data set it is evaluated on."""
    from loafing.checkpoint import load_model
    from loafing.data import load_dataset
    from loafing.evaluate import resolve_device

    if calib_size < 1:
        raise LoafingError("--calib-size must be at least 1")
    torch_device = resolve_device(device)
    loaded = load_model(ckpt, model, width_mult)
    dataset = dataset or loaded.config.get("dataset") or "digits"
    data = load_dataset(dataset, data_dir or loaded.config.get("data_dir"), download)
    if data.num_classes != loaded.config["num_classes"]:
        raise LoafingError(f"checkpoint has {loaded.config['num_classes']} classes but {dataset} has "
                           f"{data.num_classes}")
    return loaded, data, torch_device


@cli.command()
@evaluation_options
@click.option("--space", default="ordered", help="Plans to evaluate: ordered | uniform.")
@click.option("--plan", "plan_texts", multiple=True, help="Evaluate this plan (repeatable) instead of --space.")
def measure(ckpt: str, model: str | None, width_mult: float, dataset: str | None, data_dir: str | None,
            download: bool, calib_size: int, no_recalibrate: bool, seed: int, batch_size: int, device: str,
            out: str, quiet: bool, space: str, plan_texts: tuple[str, ...]) -> None:
    """Evaluate every sub-network of a checkpoint (BN-recalibrated) into a tidy CSV."""
    from loafing.io import write_csv
    from loafing.measure import measure_plans, summarize_measure, trained_plan
    from loafing.plans import get_space, parse_plan

    if space not in SPACE_NAMES:
        raise LoafingError(f"unknown space {space!r}; valid choices: {', '.join(SPACE_NAMES)}")
    plans = [parse_plan(text) for text in plan_texts]
    loaded, data, torch_device = load_for_evaluation(ckpt, model, width_mult, dataset, data_dir, download,
                                                     calib_size, device)
    alone = trained_plan(loaded)
    plans = plans or ([alone] if alone else get_space(space, loaded.model.layout))
    df = measure_plans(loaded, plans, data, calib_size=calib_size, recalibrate=not no_recalibrate, seed=seed,
                       batch_size=batch_size, device=torch_device, progress=not quiet)
    df["space"] = "plans" if plan_texts or alone else space
    write_csv(df, out)
    s = summarize_measure(df)
    click.echo(f"{loaded.config['model']} ({loaded.config.get('method')}), {len(df)} plans on {data.name} -> {out}")
    line = f"main top-1 {s['main_top1']:.2f}%"
    if s["n_subnetworks"]:
        line += (f" | {s['n_subnetworks']} sub-networks: max {s['sub_max']:.2f} mean {s['sub_mean']:.2f} "
                 f"std {s['sub_std']:.2f} min {s['sub_min']:.2f}")
    click.echo(line)


@cli.command()
@evaluation_options
@click.option("--mode", required=True, help="delete-one | delete-many | permute.")
@click.option("--max-combos", type=int, default=200,
              help="Per number of deleted layers / swaps, evaluate at most this many (a seeded sample).")
def destruct(ckpt: str, model: str | None, width_mult: float, dataset: str | None, data_dir: str | None,
             download: bool, calib_size: int, no_recalibrate: bool, seed: int, batch_size: int, device: str,
             out: str, quiet: bool, mode: str, max_combos: int) -> None:
    """Delete or permute layers and measure the accuracy drop of every destroyed network."""
    from loafing.destruct import destruct as run_destruct, summarize_drops
    from loafing.io import write_csv

    loaded, data, torch_device = load_for_evaluation(ckpt, model, width_mult, dataset, data_dir, download,
                                                     calib_size, device)
    df = run_destruct(loaded, data, mode, max_combos=max_combos, calib_size=calib_size,
                      recalibrate=not no_recalibrate, seed=seed, batch_size=batch_size, device=torch_device,
                      progress=not quiet)
    write_csv(df, out)
    main_top1 = df.loc[df["is_main"], "top1"].iloc[0]
    click.echo(f"{loaded.config['model']} ({loaded.config.get('method')}), {mode}: {len(df) - 1} destroyed "
               f"networks on {data.name}, main top-1 {main_top1:.2f}% -> {out}")
    click.echo(summarize_drops(df[df["n"] > 0]).to_string(index=False, float_format=lambda v: f"{v:.2f}"))


@cli.command()
@click.option("--results", "results_dir", type=click.Path(file_okay=False), default="results/quick",
              help="Folder of tidy CSVs (measure.csv, destruct.csv, kl_trajectory.csv, train_log.csv).")
@click.option("--out", type=click.Path(file_okay=False), default="figures/quick", help="Folder for the PNGs.")
@click.option("--only", multiple=True, help="Make only these figures (repeatable), e.g. --only fig4.")
def figures(results_dir: str, out: str, only: tuple[str, ...]) -> None:
    """Make every figure and table of the paper whose CSVs are present; say which were skipped and why."""
    from loafing.figures import make_figures

    if not Path(results_dir).is_dir():
        raise LoafingError(f"results folder {results_dir!r} does not exist")
    echo_figures(make_figures(results_dir, out, list(only) or None))


def echo_figures(outcomes) -> None:
    """One line per figure: the files written, or why it was skipped."""
    for outcome in outcomes:
        if outcome.skipped:
            click.echo(f"  {outcome.name:8s} skipped: {outcome.skipped}")
        else:
            click.echo(f"  {outcome.name:8s} {', '.join(str(p) for p in outcome.paths)}")


@cli.command()
@click.option("--preset", required=True, help="quick | paper-mbv3-cifar10 | paper-mbv3-cifar100 | "
              "paper-resnet50-cifar100 | paper-resnet50-imagenet (analyses/presets.py).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for runs/, results/ and figures/ [default: reproduce/PRESET].")
@click.option("--data-dir", default=None, help="Folder holding the data set (paper presets).")
@click.option("--device", default="auto", help="auto | cpu | cuda | cuda:N.")
@click.option("--jobs", type=int, default=None,
              help="Runs trained in parallel [default: up to 4 on CPU, each with its share of the cores; 1 on GPU].")
@click.option("--dry-run", is_flag=True, help="List the runs and their rough cost; train nothing.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def reproduce(preset: str, out: str | None, data_dir: str | None, device: str, jobs: int | None, dry_run: bool,
              quiet: bool) -> None:
    """Run a study definition end to end: training, measure, destruct, KL trajectories, figures."""
    import pandas as pd

    from analyses.presets import get_preset
    from loafing.reproduce import describe_plan, reproduce as run_preset

    study = get_preset(preset)
    if jobs is not None and jobs < 1:
        raise LoafingError("--jobs must be at least 1")
    if dry_run:
        plan = describe_plan(study)
        click.echo(f"{study.name}: {study.description}; {len(plan)} runs")
        click.echo(plan.to_string(index=False))
        total = pd.to_numeric(plan["image_passes"]).sum()
        line = f"rough cost: {total:.3g} image passes (ST counted 1.4x CT, the paper's Table r4 ratio)"
        if "paper_gpu_hours" in plan:
            line += f", about {plan['paper_gpu_hours'].sum():.0f} GPU-hours at the paper's pace"
        click.echo(line)
        return
    out = out or str(Path("reproduce") / study.name)
    start = time.perf_counter()
    summary, outcomes = run_preset(study, out, device=device, jobs=jobs, data_dir=data_dir, progress=not quiet)
    columns = ["run", "trained", "main_top1", "sub_mean", "sub_std", "sub_min", "train_s"]
    click.echo(summary[columns].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    click.echo(f"tidy CSVs in {Path(out) / 'results'}; figures:")
    echo_figures(outcomes)
    click.echo(f"{study.name}: done in {time.perf_counter() - start:.0f} s")


@cli.command()
def models() -> None:
    """List the registered models with their stage sizes and skippable blocks."""
    from loafing.models import MODELS, create_model

    for name in MODELS:
        layout = create_model(name, 10).layout
        click.echo(f"{name:22s} stages {'-'.join(map(str, layout.stage_sizes)):10s} "
                   f"main plan {layout.main_plan} | skippable {sorted(layout.skippable)}")


def main() -> None:
    """Console entry point: run the CLI, turning bad input into one line on stderr and exit code 2."""
    try:
        rc = cli.main(standalone_mode=False)
    except LoafingError as err:
        click.echo(f"loafing: error: {err}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("loafing: aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        click.echo(f"loafing: error: {err.format_message()}", err=True)
        sys.exit(2)
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
