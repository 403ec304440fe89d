"""The `loafing` command line: thin wrappers over the library; errors are one line and exit code 2.

Choices come from the registries (models, data sets, methods, spaces, presets, figures) when they are
used, and `loafing train`'s options are generated from TrainConfig, the one source of their defaults.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
import types
import typing
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import click

from loafing.config import AT_LEAST_1, SEED, Range, TrainConfig, check_choice, check_number, config_fields
from loafing.errors import AgreedError, LoafingError, LoafingWarning


class RegistryChoice(click.Choice):
    """click.Choice over a registry's names, read when they are needed (so later registrations count)."""

    def __init__(self, what: str, names: Callable[[], Sequence[str]]) -> None:
        self.what, self.names, self.case_sensitive = what, names, True

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(self.names())

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        check_choice(self.what, value, list(self.choices))
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


def _registry(what: str, module: str, attribute: str) -> RegistryChoice:
    """A RegistryChoice over `module.attribute`'s keys, imported only when the names are needed."""
    def names() -> list[str]:
        import importlib
        return list(getattr(importlib.import_module(module), attribute))
    return RegistryChoice(what, names)


def _base_type(annotation: Any) -> type:
    """int for `int | None`, and so on."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def config_options(names: Sequence[str] | None = None) -> Callable:
    """click options generated from TrainConfig fields (all that the CLI shows, or `names`): its help, defaults,
    choices and ranges."""
    hints = typing.get_type_hints(TrainConfig)
    fields = [f for f in config_fields() if f.metadata["cli"] and (names is None or f.name in names)]

    def decorate(command: Callable) -> Callable:
        for f in reversed(fields):
            kind, flag = _base_type(hints[f.name]), "--" + f.name.replace("_", "-")
            meta = f.metadata
            if kind is bool:
                command = click.option(flag, is_flag=True, default=f.default, help=meta["help"])(command)
                continue
            if meta["choices"] is not None:
                param_type: click.ParamType = RegistryChoice(meta["what"], meta["choices"])
            elif kind in (int, float):
                param_type = CheckedNumber(kind, meta["range"])
            else:
                param_type = click.STRING
            command = click.option(flag, type=param_type, default=f.default, help=meta["help"])(command)
        return command
    return decorate


POSITIVE_INT = CheckedNumber(int, AT_LEAST_1)
SEED_INT = CheckedNumber(int, SEED)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def cli() -> None:
    """Measure and fix loafing of residual networks (stimulative training, NeurIPS'22)."""


@cli.command()
@config_options()
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False), default=None,
              help="Continue the interrupted run in this folder (its saved configuration is used).")
@click.option("--overwrite", is_flag=True, help="Replace a run already in --out.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(overwrite: bool, quiet: bool, resume_dir: str | None, **options) -> None:
    """Train a network with a registered method; writes checkpoint.pt, train_log.csv and config.json to --out."""
    from loafing.train import load_config, train as run_training

    if resume_dir:
        config = dataclasses.replace(load_config(resume_dir), out=resume_dir)
    else:
        config = TrainConfig(**options)
    log = run_training(config, progress=not quiet, overwrite=overwrite, resume=bool(resume_dir))
    if log.empty:  # a torchrun process other than rank 0: rank 0 reports
        return
    last = log.iloc[-1]
    click.echo(f"{config.method} {config.model}: epoch {int(last['epoch'])}, test top-1 "
               f"{last['test_top1_recalibrated']:.2f}% (BN recalibrated), {log['seconds'].sum():.0f} s training "
               f"-> {config.out}")


def evaluation_options(f: Callable) -> Callable:
    """Options shared by the commands that evaluate plans of a checkpoint."""
    options = [
        click.option("--ckpt", required=True,
                     help="Checkpoint: loafing's own, akamaster CIFAR ResNet, or torchvision."),
        click.option("--model", type=_registry("model", "loafing.models", "MODELS"), default=None,
                     help="Model; required for foreign checkpoints."),
        click.option("--width-mult", type=CheckedNumber(float, Range(0, low_open=True)), default=1.0,
                     help="Width multiplier of a foreign checkpoint."),
        click.option("--dataset", type=_registry("dataset", "loafing.data", "DATASETS"), default=None,
                     help="Data set (default: the checkpoint's, else digits)."),
        click.option("--data-dir", default=None, help="Folder holding the data set."),
        click.option("--download", is_flag=True, help="Download the data set if missing (needs network)."),
        click.option("--image-size", type=POSITIVE_INT, default=None,
                     help="Side of the input images [default: the checkpoint's, else the model's recipe]."),
        click.option("--unsafe-load", is_flag=True,
                     help="Unpickle a checkpoint that holds Python objects besides tensors (this can run code in "
                     "it): only for a file you trust."),
        click.option("--calib-size", type=POSITIVE_INT, default=2000,
                     help="Training images used for BN recalibration."),
        click.option("--no-recalibrate", is_flag=True, help="Evaluate with the stored BN statistics."),
        click.option("--seed", type=SEED_INT, default=0, help="Seed choosing the calibration subset (and samples)."),
        click.option("--batch-size", type=POSITIVE_INT, default=256),
        click.option("--device", default="auto", help="auto | cpu | cuda | cuda:N."),
        click.option("--out", required=True, help="CSV file to write."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def load_for_evaluation(ckpt: str, model: str | None, width_mult: float, dataset: str | None,
                        data_dir: str | None, download: bool, image_size: int | None, unsafe_load: bool,
                        device: str):
    """Load the checkpoint and the data set it is evaluated on, and the device this process evaluates on."""
    from loafing.checkpoint import load_model
    from loafing.distributed import current_world, process_device, shared_error
    from loafing.evaluate import resolve_device
    from loafing.measure import evaluation_data

    world = current_world()
    if download and world.distributed:  # every process would fetch the same files at once
        raise shared_error(world, "--download under torchrun: fetch the data set once in one process, then run "
                           "without --download")
    torch_device = process_device(world, resolve_device(device))
    loaded = load_model(ckpt, model, width_mult, unsafe_load=unsafe_load)
    return loaded, evaluation_data(loaded, dataset, data_dir, download, image_size), torch_device


@cli.command()
@evaluation_options
@click.option("--space", type=_registry("space", "loafing.plans", "SPACES"), default="ordered",
              help="Plans to evaluate.")
@click.option("--plan", "plan_texts", multiple=True, help="Evaluate this plan (repeatable) instead of --space.")
def measure(ckpt: str, model: str | None, width_mult: float, dataset: str | None, data_dir: str | None,
            download: bool, image_size: int | None, unsafe_load: bool, calib_size: int, no_recalibrate: bool,
            seed: int, batch_size: int, device: str, out: str, quiet: bool, space: str,
            plan_texts: tuple[str, ...]) -> None:
    """Evaluate every sub-network of a checkpoint (BN-recalibrated) into a tidy CSV.

    Under torchrun the processes share the plans out and rank 0 writes the one CSV."""
    from loafing.distributed import current_world, process_group
    from loafing.io import check_output_file
    from loafing.measure import measure_plans, plans_to_measure, summarize_measure
    from loafing.plans import parse_plan
    from loafing.schema import write_table

    check_output_file(out, [ckpt])
    plans = [parse_plan(text) for text in plan_texts]
    loaded, data, torch_device = load_for_evaluation(ckpt, model, width_mult, dataset, data_dir, download,
                                                     image_size, unsafe_load, device)
    plans = plans or plans_to_measure(loaded, space)
    world = current_world()
    with process_group(world, torch_device):
        df = measure_plans(loaded, plans, data, calib_size=calib_size, recalibrate=not no_recalibrate, seed=seed,
                           batch_size=batch_size, device=torch_device, progress=not quiet,
                           space="plans" if plan_texts or len(plans) == 1 else space, world=world)
    if not world.is_main:
        return
    write_table(df, out, "measure")
    s = summarize_measure(df)
    click.echo(f"{loaded.config['model']} ({loaded.config.get('method')}), {len(df)} plans on {data.name} -> {out}")
    parts = [f"main top-1 {s['main_top1']:.2f}%" if s["n_subnetworks"] < len(df) else "main network not measured"]
    if s["n_subnetworks"]:
        parts.append(f"{s['n_subnetworks']} sub-networks: max {s['sub_max']:.2f} mean {s['sub_mean']:.2f} "
                     f"std {s['sub_std']:.2f} min {s['sub_min']:.2f}")
    click.echo(" | ".join(parts))


@cli.command()
@evaluation_options
@click.option("--mode", required=True, type=_registry("mode", "loafing.destruct", "MODES"),
              help="What to do to the layers.")
@click.option("--max-combos", type=POSITIVE_INT, default=200,
              help="Per number of deleted layers / swaps, evaluate at most this many (a seeded sample).")
def destruct(ckpt: str, model: str | None, width_mult: float, dataset: str | None, data_dir: str | None,
             download: bool, image_size: int | None, unsafe_load: bool, calib_size: int, no_recalibrate: bool,
             seed: int, batch_size: int, device: str, out: str, quiet: bool, mode: str, max_combos: int) -> None:
    """Delete or permute layers and measure the accuracy drop of every destroyed network.

    Under torchrun the processes share the networks out and rank 0 writes the one CSV."""
    from loafing.destruct import destruct as run_destruct, summarize_drops
    from loafing.distributed import current_world, process_group
    from loafing.io import check_output_file
    from loafing.schema import write_table

    check_output_file(out, [ckpt])
    loaded, data, torch_device = load_for_evaluation(ckpt, model, width_mult, dataset, data_dir, download,
                                                     image_size, unsafe_load, device)
    world = current_world()
    with process_group(world, torch_device):
        df = run_destruct(loaded, data, mode, max_combos=max_combos, calib_size=calib_size,
                          recalibrate=not no_recalibrate, seed=seed, batch_size=batch_size, device=torch_device,
                          progress=not quiet, world=world)
    if not world.is_main:
        return
    write_table(df, out, "destruct")
    main_top1 = df.loc[df["is_main"], "top1"].iloc[0]
    click.echo(f"{loaded.config['model']} ({loaded.config.get('method')}), {mode}: {len(df) - 1} destroyed "
               f"networks on {data.name}, main top-1 {main_top1:.2f}% -> {out}")
    click.echo(summarize_drops(df[df["n"] > 0]).to_string(index=False, float_format=lambda v: f"{v:.2f}"))


@cli.command()
@click.option("--results", "results_dir", type=click.Path(file_okay=False), default="results/quick",
              help="Folder of tidy CSVs (measure.csv, destruct.csv, kl_trajectory.csv, train_log.csv).")
@click.option("--out", type=str, default="figures/quick", help="Folder for the PNGs.")
@click.option("--only", multiple=True, type=_registry("figure", "loafing.figures", "FIGURES"),
              help="Make only these figures (repeatable), e.g. --only fig4.")
def figures(results_dir: str, out: str, only: tuple[str, ...]) -> None:
    """Make every figure and table of the paper whose CSVs are present; say which were skipped and why."""
    from loafing.distributed import require_one_process
    from loafing.figures import make_figures
    from loafing.io import check_output_folder

    require_one_process("`loafing figures`")
    if not Path(results_dir).is_dir():
        raise LoafingError(f"results folder {results_dir!r} does not exist")
    check_output_folder(out)
    echo_figures(make_figures(results_dir, out, list(only) or None))


def echo_figures(outcomes) -> None:
    """One line per figure: the files written, or why it was skipped."""
    for outcome in outcomes:
        label = f"{outcome.name} ({outcome.group})" if outcome.group else outcome.name
        if outcome.skipped:
            click.echo(f"  {label:8s} skipped: {outcome.skipped}")
        else:
            click.echo(f"  {label:8s} {', '.join(str(p) for p in outcome.paths)}")


@cli.command("inside-vs-alone")
@click.option("--ckpt", "checkpoints", multiple=True, required=True,
              help="A checkpoint, as PATH (loafing's own) or MODEL=PATH (foreign); give two or more of one family.")
@click.option("--dataset", type=_registry("dataset", "loafing.data", "DATASETS"), default=None,
              help="Data set (default: the first checkpoint's, else digits).")
@click.option("--data-dir", default=None, help="Folder holding the data set.")
@click.option("--image-size", type=POSITIVE_INT, default=None, help="Side of the input images.")
@click.option("--unsafe-load", is_flag=True, help="Unpickle checkpoints that hold other Python objects (only "
              "for files you trust).")
@click.option("--calib-size", type=POSITIVE_INT, default=2000, help="Training images used for BN recalibration.")
@click.option("--seed", type=SEED_INT, default=0, help="Seed choosing the calibration subset.")
@click.option("--batch-size", type=POSITIVE_INT, default=256)
@click.option("--device", default="auto", help="auto | cpu | cuda | cuda:N.")
@click.option("--out", type=str, required=True,
              help="Folder for measure.csv and the figures (fig1, the inside grid).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def inside_vs_alone(checkpoints: tuple[str, ...], dataset: str | None, data_dir: str | None, image_size: int | None,
                    unsafe_load: bool, calib_size: int, seed: int, batch_size: int, device: str, out: str,
                    quiet: bool) -> None:
    """Fig. 1 / Tables r5, r6: each smaller network inside each bigger one (BN-recalibrated) vs each on its own."""
    from loafing.checkpoint import load_model
    from loafing.distributed import require_one_process
    from loafing.evaluate import resolve_device
    from loafing.figures import make_figures
    from loafing.inside import inside_vs_alone as study
    from loafing.io import check_output_file, check_output_folder
    from loafing.measure import check_classes, evaluation_data
    from loafing.schema import write_table

    require_one_process("`loafing inside-vs-alone`")
    paths = [text.rpartition("=")[2] for text in checkpoints]
    check_output_file(Path(check_output_folder(out)) / "measure.csv", paths)
    torch_device = resolve_device(device)
    networks = []
    for text in checkpoints:
        model, _, path = text.rpartition("=")
        networks.append(load_model(path, model or None, unsafe_load=unsafe_load))
    data = evaluation_data(networks[0], dataset, data_dir, False, image_size)
    for loaded in networks[1:]:
        check_classes(loaded, data)
    table = study(networks, data, calib_size=calib_size, seed=seed, batch_size=batch_size, device=torch_device,
                  progress=not quiet)
    write_table(table, Path(out) / "measure.csv", "measure")
    outcomes = make_figures(out, out, ["fig1", "inside"])
    click.echo((Path(out) / "inside.md").read_text() if (Path(out) / "inside.md").exists() else "")
    echo_figures(outcomes)


def orchestration_options(f: Callable) -> Callable:
    """Options of the commands that run a study through the orchestrator."""
    options = [
        click.option("--out", type=str, default=None,
                     help="Folder for runs/, results/ and figures/ [default: reproduce/PRESET]."),
        click.option("--device", default="auto", help="auto | cpu | cuda | cuda:N."),
        click.option("--jobs", type=POSITIVE_INT, default=None,
                     help="Runs trained in parallel [default: up to 4 on CPU, each with its share of the cores; "
                     "1 on GPU]."),
        click.option("--dry-run", is_flag=True, help="List the runs and their rough cost; train nothing."),
        click.option("--quiet", is_flag=True, help="No progress bar."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def run_study(study, out: str | None, data_dir: str | None, device: str, jobs: int | None, dry_run: bool,
              quiet: bool) -> None:
    """Describe (--dry-run) or run a study definition through the orchestrator and report what it did."""
    from loafing.distributed import require_one_process
    from loafing.io import check_output_folder
    from loafing.reproduce import describe_plan, reproduce as run_preset

    require_one_process(f"`loafing {click.get_current_context().info_name}`")
    if dry_run:
        plan = describe_plan(study)
        click.echo(f"{study.name}: {study.description}; {len(plan)} runs")
        click.echo(plan.to_string(index=False))
        if "image_passes" in plan:
            line = (f"rough cost: {plan['image_passes'].astype(float).sum():.3g} image passes (each method at its "
                    "cost relative to CT; ST 1.4x, the paper's Table r4)")
            if "paper_gpu_hours" in plan:
                line += f", about {plan['paper_gpu_hours'].sum():.0f} GPU-hours at the paper's pace"
            click.echo(line)
        return
    out = str(check_output_folder(out or Path("reproduce") / study.name))
    start = time.perf_counter()
    summary, outcomes = run_preset(study, out, device=device, jobs=jobs, data_dir=data_dir, progress=not quiet)
    columns = ["run", "trained", "main_top1", "sub_mean", "sub_std", "sub_min", "train_s"]
    click.echo(summary[columns].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    click.echo(f"tidy CSVs in {Path(out) / 'results'}; figures:")
    echo_figures(outcomes)
    click.echo(f"{study.name}: done in {time.perf_counter() - start:.0f} s")


@cli.command()
@click.option("--preset", required=True, type=_registry("preset", "loafing.analyses", "PRESETS"),
              help="Study definition (loafing/analyses/).")
@click.option("--data-dir", default=None, help="Folder holding the data set (paper presets).")
@orchestration_options
def reproduce(preset: str, data_dir: str | None, **options) -> None:
    """Run a study definition end to end: training, measure, destruct, KL trajectories, figures."""
    from loafing.analyses import get_preset

    run_study(get_preset(preset), data_dir=data_dir, **options)


@cli.command("lambda-ablation")
@click.option("--lams", default="0.5,1,2,5", help="Comma-separated λ values of the ST runs.")
@click.option("--seeds", default="0", help="Comma-separated seeds (CT and every λ per seed).")
@config_options(("model", "width_mult", "dataset", "data_dir", "epochs", "batch_size", "lr", "bn_momentum",
                 "channels_last"))
@orchestration_options
def lambda_ablation(lams: str, seeds: str, out: str | None, device: str, jobs: int | None, dry_run: bool,
                    quiet: bool, **base) -> None:
    """The λ ablation (Appendix E, Fig. r3): CT per seed and ST per (λ, seed), every ordered sub-network measured."""
    from loafing.analyses.paper import lambda_ablation as ablation

    lam_values = [float(v) for v in _numbers(lams, "--lams")]
    for lam in lam_values:
        check_number("--lams", lam, Range(0))
    if not all(v.isdigit() for v in _numbers(seeds, "--seeds")):
        raise LoafingError(f"--seeds takes comma-separated non-negative integers, got {seeds!r}")
    seed_values = [int(v) for v in _numbers(seeds, "--seeds")]
    for seed in seed_values:
        check_number("--seeds", seed, SEED)
    study = ablation(TrainConfig(**base), lam_values, seed_values)
    run_study(study, out, base["data_dir"], device, jobs, dry_run, quiet)


def _numbers(text: str, flag: str) -> list[str]:
    """The comma-separated items of `text`, each checked to be a number."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    try:
        [float(item) for item in items]
    except ValueError:
        raise LoafingError(f"{flag} takes comma-separated numbers, got {text!r}") from None
    if not items:
        raise LoafingError(f"{flag} takes comma-separated numbers, got {text!r}")
    return items


@cli.command()
def models() -> None:
    """List the registered models: stages, skippable blocks, input recipe, normalization, classifier key."""
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


@cli.command()
def methods() -> None:
    """List the registered training methods and the options each reads."""
    from loafing.methods import METHODS

    for name, method in METHODS.items():
        options = ", ".join("--" + o.replace("_", "-") for o in method.options) or "none"
        click.echo(f"{name} ({method.label}): {method.description}; options: {options}")


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
        click.echo(f"loafing: error: {err.format_message()}", err=True)
        sys.exit(2)
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
