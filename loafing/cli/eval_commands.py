"""`loafing measure`, `destruct`, `influence` and `inside-vs-alone`: their evaluation options are generated from
EvalConfig."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import click
from click.core import ParameterSource

from loafing.cli.options import (MODEL_ARG, POSITIVE_INT, apply, echo_figures, registry_choice, spec_option,
                                 spec_options, typed_options)
from loafing.config import TrainConfig
from loafing.errors import LoafingError
from loafing.eval_config import CONFIRM_LIMIT, MAX_COMBOS, EvalConfig, eval_option_specs
from loafing.options import OptionSpec, check_typed, option_specs

# The calibration seed keeps the flag users know; --calib-seed names it as a study file does.
EVAL_FLAGS = {"calib_seed": ("--seed", "--calib-seed")}


def eval_options(*excluded: str) -> Callable:
    """The options generated from EvalConfig, less `excluded` fields."""
    return spec_options([s for s in eval_option_specs() if s.name not in excluded], EVAL_FLAGS)


def eval_config(options: dict[str, Any]) -> EvalConfig:
    """The EvalConfig of a command's options, taken out of `options` (the rest stay); a typed option it leaves unread
    (`--calib-size` with `--no-recalibrate`) is refused."""
    names = [s.name for s in eval_option_specs()]
    evaluation = EvalConfig(**{name: options.pop(name) for name in names if name in options})
    check_typed(evaluation, typed_options(names), eval_option_specs())
    return evaluation


def check_typed_data(dataset: str) -> None:
    """Refuse a typed --data-dir or --download that the data set evaluated on (`dataset`) leaves unread."""
    names = ("data_dir", "download")
    check_typed(TrainConfig(dataset=dataset), typed_options(names), [train_spec(name, "") for name in names])


def train_spec(name: str, help: str) -> OptionSpec:
    """TrainConfig's option `name` (its default and range: the same bounds as training) with its own help."""
    return dataclasses.replace(next(s for s in option_specs(TrainConfig) if s.name == name), help=help)


DATASET = click.option("--dataset", type=registry_choice("dataset", "loafing.data", "DATASETS"), default=None,
                       help="Data set (default: the checkpoint's, else digits).")
DATA_DIR = click.option("--data-dir", default=None, help="Folder holding the data set.")
IMAGE_SIZE = spec_option(train_spec("image_size", "Side of the input images [default: the checkpoint's, else what "
                                     "named --weights expect, else the model's recipe]."))
UNSAFE_LOAD = click.option("--unsafe-load", is_flag=True,
                           help="Unpickle a checkpoint that holds Python objects besides tensors (this can run code "
                           "in it): only for a file you trust.")
QUIET = click.option("--quiet", is_flag=True, help="No progress bars.")
DOWNLOAD = click.option("--download", is_flag=True, help="Download the data set if missing (needs network).")


def checkpoint_options(command: Callable) -> Callable:
    """The options naming one checkpoint and the data it is evaluated on."""
    return apply([
        click.option("--ckpt", default=None,
                     help="Checkpoint: loafing's own, a foreign file of --model (akamaster CIFAR ResNet, torchvision), "
                     "or akamaster:<name>, one of akamaster's published CIFAR ResNets (e.g. akamaster:resnet56; "
                     "fetched once into torch's hub cache, hash-checked at every use)."),
        click.option("--weights", default=None,
                     help="Instead of --ckpt: a timm / torchvision --model's own weights, pretrained (its library's "
                     "default, downloaded once and cached), another set its library names (a timm tag, a torchvision "
                     "name such as IMAGENET1K_V1), or a state-dict file in its own key names."),
        spec_option(dataclasses.replace(train_spec("model", "Model; required for foreign checkpoints and --weights."),
                                        default=None)),
        MODEL_ARG,
        spec_option(dataclasses.replace(train_spec("width_mult", "Width multiplier of a foreign checkpoint "
                                                   "[default: 1]."), default=None)),
        DATASET, DATA_DIR, DOWNLOAD, IMAGE_SIZE, UNSAFE_LOAD,
    ], command)


OUT_CSV = click.option("--out", required=True, help="CSV file to write.")


def prepare(out: str, evaluation: EvalConfig, ckpt: str | None, **source) -> tuple[Any, Any, Any, Any]:
    """Check the output file, then load the checkpoint (or --weights) and the data it is evaluated on: (loaded, data,
    world, device), `source` naming the model and data as `load_for_evaluation` takes them."""
    from loafing.distributed import current_world
    from loafing.io import check_output_file
    from loafing.measure import evaluation_device, load_for_evaluation

    check_output_file(out, [p for p in (ckpt, source.get("weights")) if p], folders=[source.get("data_dir")])
    world = current_world()
    device = evaluation_device(evaluation, world)
    loaded, data = load_for_evaluation(ckpt, world=world, out=out, granularity=evaluation.granularity, **source)
    check_typed_data(data.name)
    return loaded, data, world, device


@click.command()
@checkpoint_options
@eval_options()
@click.option("--plan", "plan_texts", multiple=True, help="Evaluate this plan (repeatable) instead of --space.")
@OUT_CSV
@QUIET
def measure(out: str, quiet: bool, plan_texts: tuple[str, ...], **options) -> None:
    """Evaluate every sub-network of a checkpoint (BN-recalibrated) into a tidy CSV.

    Under torchrun the processes share the plans out and rank 0 writes the one CSV."""
    from loafing.distributed import process_group
    from loafing.measure import measure_plans, plans_to_measure, summarize_measure
    from loafing.plans import parse_plan
    from loafing.schema import write_table

    if plan_texts and click.get_current_context().get_parameter_source("space") is ParameterSource.COMMANDLINE:
        raise LoafingError("--plan and --space both choose the plans to evaluate; give one of them")
    evaluation = eval_config(options)
    plans = list(dict.fromkeys(parse_plan(text) for text in plan_texts))  # a plan given twice is measured once
    loaded, data, world, device = prepare(out, evaluation, **options)
    plans = plans or plans_to_measure(loaded, evaluation.space)
    with process_group(world, device):
        df = measure_plans(loaded, plans, data, evaluation, progress=not quiet, world=world,
                           space="plans" if plan_texts or len(plans) == 1 else evaluation.space)
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


@click.command()
@checkpoint_options
@eval_options("space")
@click.option("--mode", required=True, type=registry_choice("mode", "loafing.destruct", "MODES"),
              help="What to do to the layers.")
@click.option("--max-combos", type=POSITIVE_INT, default=MAX_COMBOS,
              help="Per number of deleted layers / swaps, evaluate at most this many (a sample seeded by --seed).")
@click.option("--yes", is_flag=True, help="Evaluate more destroyed networks than the limit of "
              f"{CONFIRM_LIMIT:,} (the count and the cost are printed first).")
@OUT_CSV
@QUIET
def destruct(out: str, quiet: bool, mode: str, max_combos: int, yes: bool, **options) -> None:
    """Delete or permute layers and measure the accuracy drop of every destroyed network.

    Under torchrun the processes share the networks out and rank 0 writes the one CSV."""
    from loafing.destruct import count_destroyed, destruct as run_destruct, summarize_drops
    from loafing.distributed import process_group
    from loafing.measure import calibration_columns
    from loafing.schema import write_table

    evaluation = eval_config(options)
    loaded, data, world, device = prepare(out, evaluation, **options)
    networks, exact = count_destroyed(loaded.model.layout, mode, max_combos)
    calib = calibration_columns(loaded.model, data, evaluation)["calib_size"]
    if world.is_main:
        click.echo(f"{mode}: {'' if exact else 'at most '}{networks:,} destroyed networks and the intact one, each on "
                   f"{len(data.test):,} test images" + (f" after recalibrating BN on {calib:,}" if calib else "")
                   + f": at most {(networks + 1) * (len(data.test) + calib):.3g} image passes")
    if networks > CONFIRM_LIMIT and not yes:
        raise LoafingError(f"{networks:,} destroyed networks are more than {CONFIRM_LIMIT:,}: lower --max-combos, or "
                           "pass --yes to evaluate them all")
    with process_group(world, device):
        df = run_destruct(loaded, data, mode, evaluation, max_combos=max_combos, progress=not quiet, world=world)
    if not world.is_main:
        return
    write_table(df, out, "destruct")
    main_top1 = df.loc[df["is_main"], "top1"].iloc[0]
    click.echo(f"{loaded.config['model']} ({loaded.config.get('method')}), {mode}: {len(df) - 1} destroyed "
               f"networks on {data.name}, main top-1 {main_top1:.2f}% -> {out}")
    what = "swaps that permute the layers" if mode == "permute" else "layers deleted"
    click.echo(f"top-1 drop in percentage points (main network's top-1 minus the destroyed network's) per n, the "
               f"number of {what}:")
    click.echo(summarize_drops(df[df["n"] > 0]).to_string(index=False, float_format=lambda v: f"{v:.2f}"))


@click.command("inside-vs-alone")
@click.option("--ckpt", "checkpoints", multiple=True, required=True,
              help="A checkpoint, as PATH (loafing's own), MODEL=PATH (foreign) or akamaster:<name> (a published "
              "one, e.g. akamaster:resnet56); give two or more of one family.")
@DATASET
@DATA_DIR
@DOWNLOAD
@spec_option(train_spec("image_size", "Side of the input images [default: the first checkpoint's, else its "
                                      "model's recipe]."))
@UNSAFE_LOAD
@eval_options("space")
@click.option("--out", type=str, required=True,
              help="Folder for measure.csv and the figures (fig1, the inside grid).")
@QUIET
def inside_vs_alone(checkpoints: tuple[str, ...], dataset: str | None, data_dir: str | None, download: bool,
                    image_size: int | None, unsafe_load: bool, out: str, quiet: bool, **options) -> None:
    """Each smaller network inside each bigger one (BN-recalibrated) vs each on its own.

    The paper's Figure 1 and Tables r5, r6; writes measure.csv, the figures and inside.md to --out, and, for the
    networks trained conventionally, loafing_gap.csv and gap.md: each one's gap inside each host, paired over the
    test images."""
    from loafing.distributed import require_one_process
    from loafing.figures import make_figures
    from loafing.inside import inside_vs_alone as study, load_family, loafing_gaps
    from loafing.io import check_output_file, check_output_folder
    from loafing.measure import evaluation_device
    from loafing.schema import write_table

    require_one_process("`loafing inside-vs-alone`")
    evaluation = eval_config(options)
    check_output_file(Path(check_output_folder(out, folders=[data_dir])) / "measure.csv",
                      [t.rpartition("=")[2] for t in checkpoints], folders=[data_dir])
    evaluation_device(evaluation)  # a bad --device is said before the checkpoints are read
    networks, data = load_family(checkpoints, dataset, data_dir, image_size, unsafe_load, out_folder=out,
                                 granularity=evaluation.granularity, download=download)
    check_typed_data(data.name)
    write_table(study(networks, data, evaluation, progress=not quiet), Path(out) / "measure.csv", "measure")
    gaps = loafing_gaps(networks, data, evaluation, progress=not quiet)
    if not gaps.empty:
        write_table(gaps, Path(out) / "loafing_gap.csv", "loafing_gap")
    outcomes = make_figures(out, out, ["fig1", "inside"] + (["gap"] if not gaps.empty else []))
    for table in ("inside.md", "gap.md"):
        click.echo((Path(out) / table).read_text() if (Path(out) / table).exists() else "")
    echo_figures(outcomes)


@click.command()
@checkpoint_options
@eval_options("space")
@OUT_CSV
@QUIET
def influence(out: str, quiet: bool, **options) -> None:
    """Block influence (1 - cosine of a block's input and output) and each block's delete-one top-1 drop.

    Measured on the main network, BN-recalibrated as measure does; the drops are `destruct --mode delete-one`'s.
    Under torchrun the processes share the deletions out and rank 0 writes the one CSV."""
    from loafing.distributed import process_group
    from loafing.influence import block_influence
    from loafing.schema import write_table

    evaluation = eval_config(options)
    loaded, data, world, device = prepare(out, evaluation, **options)
    with process_group(world, device):
        df = block_influence(loaded, data, evaluation, progress=not quiet, world=world)
    if not world.is_main:
        return
    write_table(df, out, "influence")
    click.echo(f"{loaded.config['model']} ({loaded.config.get('method')}), {len(df)} blocks on {data.name} -> {out}")
    shown = df[["block", "stage", "deletable", "influence", "top1_drop"]]
    click.echo(shown.to_string(index=False, na_rep="", float_format=lambda v: f"{v:.4f}"))
