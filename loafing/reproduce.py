"""The one orchestrator: run a study definition end to end — training runs, measure, destruct, KL, figures.

Completed work is reused: a run whose folder holds a finished training of the same configuration on the same
data is not retrained, an interrupted one is resumed, and a result CSV made from its checkpoint as it is, on the
same data, with the same evaluation settings is not recomputed (`loafing.provenance`). A run another study trained
is never trained over, and a run of other data is never reused: both are refused before any work starts.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import multiprocessing
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from loafing.checkpoint import read_checkpoint
from loafing.config import TrainConfig, flat_settings, with_method_defaults
from loafing.errors import LoafingError
from loafing.evaluate import resolve_device
from loafing.inside import check_inside_view
from loafing.io import write_json
from loafing.methods import METHODS, get_method
from loafing.models import get_spec
from loafing.measure import summarize_measure
from loafing.provenance import ORIGIN_NAME, check_run_folder, data_fingerprint, setting_differences, write_origin
from loafing.schema import read_table
from loafing.studies import InsideSpec, Preset, RunSpec  # noqa: F401  (a study's definition, re-exported)
from loafing.study_results import (collect_results, evaluate_run, evaluation_settings, inside_grid, result_file,
                                   results_are_fresh)
from loafing.run_state import CHECKPOINT_NAME
from loafing.signals import stop_children, unless_stopping, worker_signals
from loafing.train import check_config, train, training_data

DATA_SETTINGS = ("dataset", "data_dir", "download", "model", "image_size")  # what a run's data depends on


def has_config(run_dir: str | Path, config: TrainConfig) -> bool:
    """Whether `run_dir` holds a run (finished or not) of this configuration (its method's options included, the
    ones left at their defaults as the defaults)."""
    return (Path(run_dir) / CHECKPOINT_NAME).exists() and not setting_differences(Path(run_dir), config)


def is_complete(config: TrainConfig) -> bool:
    """Whether `config.out` holds a finished run of exactly this configuration."""
    out = Path(config.out)
    return has_config(out, config) and read_checkpoint(out / CHECKPOINT_NAME, own=True)["epoch"] == config.epochs


def train_once(config: TrainConfig, progress: bool = True) -> Path:
    """Train unless the same run is already complete; resume it if it was interrupted; replace another run."""
    out = Path(config.out)
    if is_complete(config):
        return out
    started = has_config(out, config)
    train(config, progress=progress, resume=started, overwrite=not started)
    return out


def train_for_study(config: TrainConfig, study: str, fingerprint: dict[str, Any]) -> None:
    """`train_once` in a folder that first records the study and the data; a run that fails before its first
    checkpoint leaves no folder behind (as `loafing train` leaves none)."""
    out = Path(config.out)
    created, recorded = not out.exists(), (out / ORIGIN_NAME).exists()
    write_origin(out, study, fingerprint)
    try:
        train_once(config, progress=False)
    finally:
        # Only what this call made goes: a folder in use by another process keeps its record and its lock.
        if not (out / CHECKPOINT_NAME).exists() and not recorded:
            (out / ORIGIN_NAME).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                if created and {p.name for p in out.iterdir()} <= {".lock"}:  # the lock of a run that never started
                    (out / ".lock").unlink(missing_ok=True)
                    out.rmdir()


@dataclass
class RunReport:
    """What happened to one run: whether work was reused, seconds per stage, its measured summary."""

    name: str
    trained: bool
    seconds: dict[str, float] = field(default_factory=dict)
    summary: dict[str, float] = field(default_factory=dict)


def run_config(spec: RunSpec, runs_dir: Path, device: str) -> TrainConfig:
    """The spec's training config placed in its own folder under `runs_dir`."""
    return dataclasses.replace(spec.config, out=str(runs_dir / spec.name), run=spec.name, device=device)


def is_finished(spec: RunSpec, runs_dir: Path, preset: Preset, device: str, fingerprint: dict[str, Any]) -> bool:
    """Whether a run is trained and every evaluation of it is fresh, with the preset's evaluation settings."""
    config = run_config(spec, runs_dir, device)
    return is_complete(config) and results_are_fresh(spec, Path(config.out), preset, fingerprint)


def complete_run(spec: RunSpec, runs_dir: Path, preset: Preset, device: str, fingerprint: dict[str, Any],
                 threads: int = 0) -> RunReport:
    """Train (or reuse) one run on the data of `fingerprint`, then measure and destruct it as the spec asks; results
    stay in its folder."""
    unless_stopping()
    if threads:
        torch.set_num_threads(threads)
    config = run_config(spec, runs_dir, device)
    out = Path(config.out)
    report = RunReport(spec.name, trained=not is_complete(config))
    start = time.perf_counter()
    if report.trained:
        train_for_study(config, preset.name, fingerprint)
    report.seconds["train"] = time.perf_counter() - start
    report.seconds.update(evaluate_run(spec, out, preset, device, fingerprint))
    if spec.measure:
        report.summary = summarize_measure(read_table(out / result_file("measure"), "measure"))
    return report


def default_jobs(device: str) -> int:
    """Runs in parallel: up to 4 on CPU (the cores split between them), one on a GPU."""
    if resolve_device(device).type == "cuda":
        return 1
    return max(1, min(4, os.cpu_count() or 1))


def estimated_cost(spec: RunSpec, preset: Preset) -> float:
    """Rough cost of a run in main-network image passes (each method counted at its cost relative to CT)."""
    config = spec.config
    method = get_method(config.method)
    factor = method.run_cost(with_method_defaults(config).method_options) if method.run_cost else method.relative_cost
    if config.plan:
        factor *= 0.5  # a sub-network alone is shallower; a rough guess, only used to order and estimate
    images = min(config.train_size, preset.train_images) if config.train_size else preset.train_images
    return config.epochs * images * factor


def method_options_text(config: TrainConfig) -> str:
    """The run's method options set away from their defaults, as `name=value` (what --dry-run shows of them)."""
    options = with_method_defaults(config).method_options
    return " ".join(f"{spec.name}={options[spec.name]}" for spec in get_method(config.method).options
                    if options[spec.name] != spec.default)


def describe_plan(preset: Preset) -> pd.DataFrame:
    """What `reproduce` would run (for --dry-run): one row per run with its settings, its method's own options
    (those not at their defaults) and rough cost."""
    rows = []
    for spec in preset.runs:
        c = spec.config
        args = ",".join(f"{k}={v}" for k, v in c.model_args.items())
        row = {"run": spec.name, "model": f"{c.model} {args}".strip(), "dataset": c.dataset, "method": c.method, "plan": c.plan or "",
               "seed": c.seed, "epochs": c.epochs, "kl_every": c.kl_every or "", "options": method_options_text(c),
               "destruct": ",".join(preset.destruct_modes) if spec.destruct else ""}
        if preset.train_images:
            passes = estimated_cost(spec, preset)
            row["image_passes"] = f"{passes:.3g}"
            if preset.ct_hours is not None:
                row["paper_gpu_hours"] = round(preset.ct_hours * passes / (c.epochs * preset.train_images), 1)
        rows.append(row)
    return pd.DataFrame(rows)


def dry_run_text(preset: Preset) -> str:
    """What `loafing reproduce --dry-run` prints: the study, its runs with their settings and rough cost, what is
    evaluated and drawn, and the total cost (each method at its training cost relative to CT, from the registry)."""
    plan = describe_plan(preset)
    lines = [f"{preset.name}: {preset.description}; {len(plan)} runs"] + [plan.to_string(index=False)] * bool(len(plan))
    measured = [s.name for s in preset.runs if s.measure]
    measured_text = "every run" if measured and len(measured) == len(plan) else ", ".join(measured) or "no run"
    lines.append(f"measured: {measured_text}; "
                 + " ".join(f"{k}={v}" for k, v in dataclasses.asdict(preset.evaluation).items())
                 + (f"; destruct: at most {preset.max_combos} networks per n" if any(s.destruct for s in preset.runs)
                    else ""))
    influenced = [s.name for s in preset.runs if s.influence]
    if influenced:
        lines.append(f"block influence: {', '.join(influenced)}")
    if preset.inside is not None:
        family = ", ".join([*preset.inside.runs, *preset.inside.checkpoints])
        lines.append(f"inside-vs-alone: {family} (each smaller network inside each bigger one, and each alone)")
    figures = ", ".join(preset.figures) if preset.figures is not None else "every one the tables allow"
    lines.append(f"figures: {figures}")
    if "image_passes" in plan:
        methods = [m for m in METHODS if m in set(plan["method"])]
        costs = ", ".join(f"{m} {get_method(m).relative_cost:.2g}x"
                          + (" at its defaults" if get_method(m).run_cost else "") for m in methods)
        total = sum(estimated_cost(spec, preset) for spec in preset.runs)  # the rows' costs are rounded
        line = (f"rough cost: {total:.3g} image passes (each method at its "
                f"training cost relative to CT: {costs})")
        if "paper_gpu_hours" in plan:
            line += f", about {plan['paper_gpu_hours'].sum():.0f} GPU-hours at the paper's pace"
        lines.append(line)
    elif len(plan):
        lines.append("rough cost: not estimated: the study file does not say how many training images its data set "
                     "has (set train_images)")
    return "\n".join(lines)


def reproduce(preset: Preset, out: str | Path, device: str = "auto", jobs: int | None = None,
              data_dir: str | None = None, progress: bool = True) -> tuple[pd.DataFrame, list[Any]]:
    """Run every run of `preset` into `out/runs`, collect tidy CSVs in `out/results`, figures in `out/figures`.

    Completed work is reused: a finished run with the same config on the same data is not retrained and a result
    CSV made from its checkpoint is not recomputed, so an interrupted reproduction continues. Ctrl-C (and SIGTERM
    or SIGHUP, as `loafing.signals` raises them) stops the runs' worker processes too.
    Returns one summary row per run and the figure outcomes.
    """
    out = Path(out)
    runs_dir, results_dir = out / "runs", out / "results"
    names = [s.name for s in preset.runs]
    if len(set(names)) != len(names):
        raise LoafingError(f"preset {preset.name!r} names a run twice")
    specs = [dataclasses.replace(s, config=dataclasses.replace(s.config, data_dir=data_dir or s.config.data_dir))
             for s in preset.runs]
    for spec in specs:  # bad settings fail here, before any run starts
        check_config(run_config(spec, runs_dir, device))
        if preset.evaluation.granularity is not None:  # a view its evaluations need that the network has not
            get_spec(spec.config.model, spec.config.model_args, preset.evaluation.granularity)
    fingerprints = {}
    for settings in {tuple(getattr(s.config, name) for name in DATA_SETTINGS) for s in specs}:
        # Missing or broken data fails here, before hours of training, not after.
        values = dict(zip(DATA_SETTINGS, settings))
        fingerprints[settings] = data_fingerprint(training_data(TrainConfig(**values)), values["data_dir"])
    fingerprints = {s.name: fingerprints[tuple(getattr(s.config, name) for name in DATA_SETTINGS)] for s in specs}
    for spec in specs:  # another study's run, or a run of other data, is refused before any run starts
        config = run_config(spec, runs_dir, device)
        check_run_folder(Path(config.out), config, preset.name, fingerprints[spec.name],
                         repr(config.data_dir) if config.data_dir else config.dataset)
    if preset.inside is not None:  # the comparison is block by block: say so before the runs train, not after
        check_inside_view(preset.evaluation.granularity)
    for text in preset.inside.checkpoints if preset.inside else ():
        if not Path(text.rpartition("=")[2]).is_file():
            raise LoafingError(f"study {preset.name!r}: checkpoint file {text.rpartition('=')[2]} does not exist")
    jobs = jobs or default_jobs(device)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    ordered = sorted(specs, key=lambda s: -estimated_cost(s, preset))  # longest first balances the workers

    reports: dict[str, RunReport] = {}
    bar = tqdm(total=len(ordered), desc=f"{preset.name}: runs", unit="run", disable=not progress)

    def finished(report: RunReport) -> None:
        reports[report.name] = report
        # Wall time, start-up and per-epoch evaluation included: Table r4's training time counts the steps only.
        done = "reused" if not report.trained else f"trained in {report.seconds['train']:.0f} s wall"
        main = f", main {report.summary['main_top1']:.2f}%" if report.summary else ""
        bar.write(f"  {report.name}: {done}, evaluated {sum(report.seconds.values()) - report.seconds['train']:.0f} s"
                  + main)
        bar.update()

    todo = []
    for spec in ordered:
        if is_finished(spec, runs_dir, preset, device, fingerprints[spec.name]):
            measured = runs_dir / spec.name / result_file("measure")
            summary = summarize_measure(read_table(measured, "measure")) if spec.measure else {}
            finished(RunReport(spec.name, trained=False, seconds={"train": 0.0}, summary=summary))
        else:
            todo.append(spec)
    # Every run in a fresh process with its share of the cores: small models use several cores poorly,
    # and a per-run process makes the CPU peak-memory column of train_log.csv that run's own.
    context = multiprocessing.get_context("spawn")
    stopping, others = context.Event(), multiprocessing.active_children()  # others: a caller's, left alone
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context, max_tasks_per_child=1,
                                                initializer=worker_signals, initargs=(stopping,)) as pool:
        futures = [pool.submit(complete_run, spec, runs_dir, preset, device, fingerprints[spec.name], threads)
                   for spec in todo]
        try:
            for future in concurrent.futures.as_completed(futures):
                finished(future.result())
        except BaseException as error:
            if isinstance(error, KeyboardInterrupt):  # Ctrl-C, SIGTERM or SIGHUP: the running runs stop too
                stop_children(stopping, spared=others)
            pool.shutdown(cancel_futures=True)  # do not start the other runs after a failure
            raise
    bar.close()

    from loafing.figures import make_figures  # matplotlib and seaborn load only when figures are made

    if preset.inside is not None:
        inside_grid(preset, runs_dir, out / "inside", device, data_dir, progress)
    collect_results([runs_dir / name for name in names] + [out / "inside"] * (preset.inside is not None), results_dir)
    # Run folders relative to `out`, so the record stays true when the folder is moved or committed; written before
    # the figures, whose page shows these settings.
    write_json({"preset": preset.name, "description": preset.description, "jobs": jobs,
                "evaluation": evaluation_settings(preset),
                "inside": dataclasses.asdict(preset.inside) if preset.inside else None,
                "runs": [flat_settings(run_config(s, Path("runs"), device)) for s in specs]},
               results_dir / "preset.json")
    figures = make_figures(results_dir, out / "figures", preset.figures)
    summary = pd.DataFrame([{"run": n, "trained": reports[n].trained, **reports[n].summary,
                             **{f"{k}_s": v for k, v in reports[n].seconds.items()}} for n in names])
    return summary, figures
