"""The one orchestrator: run a study definition end to end — training runs, measure, destruct, KL, figures.

Completed work is reused: a run whose folder holds a finished training of the same configuration is
not retrained, an interrupted one is resumed, and a result CSV newer than its checkpoint (made with
the same evaluation settings) is not recomputed.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from loafing.checkpoint import load_model, read_checkpoint
from loafing.config import TrainConfig
from loafing.destruct import MODES, destruct
from loafing.errors import LoafingError
from loafing.evaluate import resolve_device
from loafing.io import write_json
from loafing.methods import get_method
from loafing.measure import evaluation_data, measure_plans, plans_to_measure, summarize_measure
from loafing.schema import TABLES, read_table, write_table
from loafing.train import CHECKPOINT_NAME, KL_NAME, LOG_NAME, check_config, load_config, train, training_data


@dataclass(frozen=True)
class RunSpec:
    """One training run of a study, and which evaluations follow it."""

    name: str
    config: TrainConfig  # `out` and `run` are set by the preset's output folder and `name`
    destruct: bool = False


@dataclass(frozen=True)
class Preset:
    """A study definition: the runs, how they are evaluated, and what they roughly cost."""

    name: str
    description: str
    runs: tuple[RunSpec, ...]
    calib_size: int = 2000
    max_combos: int = 200
    destruct_modes: tuple[str, ...] = MODES
    train_images: int = 0  # size of the training split, for the rough cost of --dry-run
    ct_hours: float | None = None  # the paper's hours for one CT run of this setting (Table r4), if reported


# Where a run executes and where its data lives do not change what it is.
NOT_IDENTIFYING = ("run", "num_classes", "device", "workers", "data_dir", "download")


def has_config(run_dir: str | Path, config: TrainConfig) -> bool:
    """Whether `run_dir` holds a run (finished or not) of this configuration."""
    if not (Path(run_dir) / CHECKPOINT_NAME).exists():
        return False
    saved, wanted = dataclasses.asdict(load_config(run_dir)), dataclasses.asdict(config)
    return all(saved[k] == wanted[k] for k in wanted if k not in NOT_IDENTIFYING)


def is_complete(config: TrainConfig) -> bool:
    """Whether `config.out` holds a finished run of exactly this configuration."""
    out = Path(config.out)
    return has_config(out, config) and read_checkpoint(out / CHECKPOINT_NAME)["epoch"] == config.epochs


def train_once(config: TrainConfig, progress: bool = True) -> Path:
    """Train unless the same run is already complete; resume it if it was interrupted; replace another run."""
    out = Path(config.out)
    if is_complete(config):
        return out
    started = has_config(out, config)
    train(config, progress=progress, resume=started, overwrite=not started)
    return out


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


def evaluation_settings(preset: Preset) -> dict[str, Any]:
    """What a run's result CSVs depend on besides its checkpoint."""
    return {"calib_size": preset.calib_size, "max_combos": preset.max_combos, "calib_seed": 0}


def result_file(job: str) -> str:
    """Where a run folder keeps the CSV of one evaluation job ("measure" or a destruct mode)."""
    return "measure.csv" if job == "measure" else f"destruct-{job}.csv"


def evaluation_jobs(spec: RunSpec, preset: Preset) -> list[str]:
    """The evaluations a run gets: measure, and the destruct modes if the spec asks for them."""
    return ["measure", *(preset.destruct_modes if spec.destruct else ())]


def is_fresh(csv: Path, checkpoint: Path) -> bool:
    """Whether a result CSV exists and was made from the current checkpoint (not an earlier training)."""
    return csv.exists() and csv.stat().st_mtime >= checkpoint.stat().st_mtime


def is_finished(spec: RunSpec, runs_dir: Path, preset: Preset, device: str) -> bool:
    """Whether a run is trained and every evaluation of it is fresh, with the preset's evaluation settings."""
    config = run_config(spec, runs_dir, device)
    out = Path(config.out)
    settings = out / "evaluation.json"
    if not is_complete(config) or not settings.exists():
        return False
    if json.loads(settings.read_text()) != evaluation_settings(preset):
        return False
    return all(is_fresh(out / result_file(job), out / CHECKPOINT_NAME) for job in evaluation_jobs(spec, preset))


def complete_run(spec: RunSpec, runs_dir: Path, preset: Preset, device: str, threads: int = 0) -> RunReport:
    """Train (or reuse) one run, then measure its plans and, if asked, destruct it; results stay in its folder."""
    if threads:
        torch.set_num_threads(threads)
    config = run_config(spec, runs_dir, device)
    out = Path(config.out)
    report = RunReport(spec.name, trained=not is_complete(config))
    start = time.perf_counter()
    train_once(config, progress=False)
    report.seconds["train"] = time.perf_counter() - start

    checkpoint, settings = out / CHECKPOINT_NAME, out / "evaluation.json"
    wanted = evaluation_settings(preset)
    if not settings.exists() or json.loads(settings.read_text()) != wanted:
        for name in ["measure", *MODES]:  # results of other evaluation settings are stale
            (out / result_file(name)).unlink(missing_ok=True)
        write_json(wanted, settings)
    loaded = None
    for job in evaluation_jobs(spec, preset):
        csv = out / result_file(job)
        start = time.perf_counter()
        if not is_fresh(csv, checkpoint):
            if loaded is None:
                loaded = load_model(checkpoint)
                data = evaluation_data(loaded)
            options = dict(calib_size=preset.calib_size, recalibrate=True, seed=wanted["calib_seed"], batch_size=256,
                           device=resolve_device(device), progress=False)
            if job == "measure":
                plans = plans_to_measure(loaded, "ordered")
                space = "ordered" if len(plans) > 1 else "plans"
                write_table(measure_plans(loaded, plans, data, space=space, **options), csv, "measure")
            else:
                write_table(destruct(loaded, data, job, max_combos=preset.max_combos, **options), csv, "destruct")
        report.seconds[job] = time.perf_counter() - start
    report.summary = summarize_measure(read_table(out / "measure.csv", "measure"))
    return report


def collect_results(runs_dir: Path, names: Sequence[str], results_dir: Path) -> dict[str, Path]:
    """Concatenate every run's CSVs into one tidy CSV per table in `results_dir`."""
    sources = {"measure": ["measure.csv"], "destruct": [result_file(m) for m in MODES],
               "kl_trajectory": [KL_NAME], "train_log": [LOG_NAME]}
    written = {}
    for table, files in sources.items():
        parts = [read_table(runs_dir / name / f, table) for name in names for f in files
                 if (runs_dir / name / f).exists()]
        if parts:
            written[table] = results_dir / TABLES[table].file
            write_table(pd.concat(parts, ignore_index=True), written[table], table)
    return written


def default_jobs(device: str) -> int:
    """Runs in parallel: up to 4 on CPU (the cores split between them), one on a GPU."""
    if resolve_device(device).type == "cuda":
        return 1
    return max(1, min(4, os.cpu_count() or 1))


def estimated_cost(spec: RunSpec, preset: Preset) -> float:
    """Rough cost of a run in main-network image passes (each method counted at its cost relative to CT)."""
    config = spec.config
    factor = get_method(config.method).relative_cost
    if config.plan:
        factor *= 0.5  # a sub-network alone is shallower; a rough guess, only used to order and estimate
    return config.epochs * preset.train_images * factor


def method_options_text(config: TrainConfig) -> str:
    """The run's method options set away from their defaults, other than those --dry-run shows as columns."""
    defaults = TrainConfig()
    shown = ("lam", "space_size", "plan")
    return " ".join(f"{o}={getattr(config, o)}" for o in get_method(config.method).options
                    if o not in shown and getattr(config, o) != getattr(defaults, o))


def describe_plan(preset: Preset) -> pd.DataFrame:
    """What `reproduce` would run (for --dry-run): one row per run with its settings and rough cost."""
    rows = []
    for spec in preset.runs:
        c = spec.config
        row = {"run": spec.name, "model": c.model, "dataset": c.dataset, "method": c.method, "lam": c.lam,
               "space_size": c.space_size or "", "plan": c.plan or "", "seed": c.seed, "epochs": c.epochs,
               "kl_every": c.kl_every or "", "options": method_options_text(c),
               "destruct": ",".join(preset.destruct_modes) if spec.destruct else ""}
        if preset.train_images:
            passes = estimated_cost(spec, preset)
            row["image_passes"] = f"{passes:.3g}"
            if preset.ct_hours is not None:
                row["paper_gpu_hours"] = round(preset.ct_hours * passes / (c.epochs * preset.train_images), 1)
        rows.append(row)
    return pd.DataFrame(rows)


def reproduce(preset: Preset, out: str | Path, device: str = "auto", jobs: int | None = None,
              data_dir: str | None = None, progress: bool = True) -> tuple[pd.DataFrame, list[Any]]:
    """Run every run of `preset` into `out/runs`, collect tidy CSVs in `out/results`, figures in `out/figures`.

    Completed work is reused: a finished run with the same config is not retrained and a result CSV
    newer than its checkpoint is not recomputed, so an interrupted reproduction continues.
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
    data_settings = ("dataset", "data_dir", "download", "model", "image_size")
    for settings in {tuple(getattr(s.config, name) for name in data_settings) for s in specs}:
        # Missing or broken data fails here, before hours of training, not after.
        training_data(TrainConfig(**dict(zip(data_settings, settings))))
    jobs = jobs or default_jobs(device)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    ordered = sorted(specs, key=lambda s: -estimated_cost(s, preset))  # longest first balances the workers

    reports: dict[str, RunReport] = {}
    bar = tqdm(total=len(ordered), desc=f"{preset.name}: runs", unit="run", disable=not progress)

    def finished(report: RunReport) -> None:
        reports[report.name] = report
        done = "reused" if not report.trained else f"trained {report.seconds['train']:.0f} s"
        bar.write(f"  {report.name}: {done}, evaluated {sum(report.seconds.values()) - report.seconds['train']:.0f} s"
                  f", main {report.summary['main_top1']:.2f}%")
        bar.update()

    todo = []
    for spec in ordered:
        if is_finished(spec, runs_dir, preset, device):
            measured = read_table(runs_dir / spec.name / result_file("measure"), "measure")
            finished(RunReport(spec.name, trained=False, seconds={"train": 0.0}, summary=summarize_measure(measured)))
        else:
            todo.append(spec)
    # Every run in a fresh process with its share of the cores: small models use several cores poorly,
    # and a per-run process makes the CPU peak-memory column of train_log.csv that run's own.
    context = multiprocessing.get_context("spawn")
    fresh = {"max_tasks_per_child": 1} if sys.version_info >= (3, 11) else {}
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context, **fresh) as pool:
        futures = [pool.submit(complete_run, spec, runs_dir, preset, device, threads) for spec in todo]
        try:
            for future in concurrent.futures.as_completed(futures):
                finished(future.result())
        except BaseException:
            pool.shutdown(cancel_futures=True)  # do not start the other runs after a failure or Ctrl-C
            raise
    bar.close()

    from loafing.figures import make_figures  # matplotlib and seaborn load only when figures are made

    collect_results(runs_dir, names, results_dir)
    figures = make_figures(results_dir, out / "figures")
    summary = pd.DataFrame([{"run": n, "trained": reports[n].trained, **reports[n].summary,
                             **{f"{k}_s": v for k, v in reports[n].seconds.items()}} for n in names])
    # Run folders relative to `out`, so the record stays true when the folder is moved or committed.
    write_json({"preset": preset.name, "description": preset.description, "jobs": jobs,
                "evaluation": evaluation_settings(preset),
                "runs": [dataclasses.asdict(run_config(s, Path("runs"), device)) for s in specs]},
               results_dir / "preset.json")
    return summary, figures
