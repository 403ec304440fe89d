"""What a study computes from its trained runs: each run's measure and destruct tables, the inside-vs-alone grid,
which of them are fresh, and the tidy CSVs collected from them (the evaluation half of `loafing.reproduce`)."""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from loafing.checkpoint import load_model
from loafing.destruct import MODES, destruct
from loafing.eval_config import EvalConfig
from loafing.influence import block_influence
from loafing.inside import inside_vs_alone, load_family, loafing_gaps
from loafing.io import write_json
from loafing.measure import evaluation_data, measure_plans, plans_to_measure
from loafing.schema import TABLES, read_table, run_identifiers, write_table
from loafing.table_keys import one_row_per_key
from loafing.studies import Preset, RunSpec
from loafing.run_state import CHECKPOINT_NAME, CONFIG_NAME, KL_NAME, LOG_NAME, load_config


def evaluation_config(preset: Preset, device: str) -> EvalConfig:
    """The study's evaluation settings, on the runs' device unless the study names one for the evaluations."""
    if preset.evaluation.device != "auto":
        return preset.evaluation
    return dataclasses.replace(preset.evaluation, device=device)


def evaluation_settings(preset: Preset) -> dict[str, Any]:
    """What a run's result CSVs depend on besides its checkpoint (not the device that computed them; a granularity
    left to the checkpoint is left out, so that results written before the unit view still match)."""
    settings = {k: v for k, v in dataclasses.asdict(preset.evaluation).items()
                if k != "device" and not (k == "granularity" and v is None)}
    return {**settings, "max_combos": preset.max_combos}


JOBS = ("measure", *MODES, "influence")  # every evaluation a study can ask of a run


def result_file(job: str) -> str:
    """Where a run folder keeps the CSV of one evaluation job ("measure", a destruct mode or "influence")."""
    return f"{job}.csv" if job in ("measure", "influence") else f"destruct-{job}.csv"


def evaluation_jobs(spec: RunSpec, preset: Preset) -> list[str]:
    """The evaluations a run gets: measure, the destruct modes and block influence, each if the spec asks for it."""
    return (["measure"] * spec.measure + list(preset.destruct_modes if spec.destruct else ())
            + ["influence"] * spec.influence)


def is_fresh(csv: Path, checkpoint: Path) -> bool:
    """Whether a result CSV exists and was made from the current checkpoint (not an earlier training)."""
    return csv.exists() and csv.stat().st_mtime >= checkpoint.stat().st_mtime


def results_are_fresh(spec: RunSpec, out: Path, preset: Preset) -> bool:
    """Whether the run folder `out` holds every evaluation the spec asks for, fresh, with the study's settings,
    and no other."""
    settings = out / "evaluation.json"
    if not settings.exists() or json.loads(settings.read_text()) != evaluation_settings(preset):
        return False
    jobs = evaluation_jobs(spec, preset)
    if any((out / result_file(job)).exists() for job in JOBS if job not in jobs):
        return False
    return all(is_fresh(out / result_file(job), out / CHECKPOINT_NAME) for job in jobs)


def evaluate_run(spec: RunSpec, out: Path, preset: Preset, device: str) -> dict[str, float]:
    """Measure and destruct the trained run in `out` as the spec asks, unless fresh; seconds per job."""
    checkpoint, settings = out / CHECKPOINT_NAME, out / "evaluation.json"
    wanted, jobs = evaluation_settings(preset), evaluation_jobs(spec, preset)
    stale = not settings.exists() or json.loads(settings.read_text()) != wanted
    for name in JOBS:  # results of other evaluation settings, or of evaluations not asked for
        if stale or name not in jobs:
            (out / result_file(name)).unlink(missing_ok=True)
    if stale:
        write_json(wanted, settings)
    loaded, evaluation, seconds = None, evaluation_config(preset, device), {}
    for job in jobs:
        csv = out / result_file(job)
        start = time.perf_counter()
        if not is_fresh(csv, checkpoint):
            if loaded is None:
                loaded = load_model(checkpoint, granularity=evaluation.granularity)
                data = evaluation_data(loaded)
            if job == "measure":
                plans = plans_to_measure(loaded, evaluation.space)
                space = evaluation.space if len(plans) > 1 else "plans"
                write_table(measure_plans(loaded, plans, data, evaluation, space=space, progress=False), csv,
                            "measure")
            elif job == "influence":
                # the delete-one job, when the study asks for it, ran before this one on the same checkpoint
                deleted = read_table(out / result_file("delete-one"), "destruct") if "delete-one" in jobs else None
                write_table(block_influence(loaded, data, evaluation, progress=False, delete_one=deleted), csv,
                            "influence")
            else:
                write_table(destruct(loaded, data, job, evaluation, max_combos=preset.max_combos, progress=False),
                            csv, "destruct")
        seconds[job] = time.perf_counter() - start
    return seconds


def inside_checkpoints(preset: Preset, runs_dir: Path) -> list[str]:
    """The [inside] family's checkpoints: this study's runs', then the study's checkpoint files."""
    inside = preset.inside
    return [str(runs_dir / name / CHECKPOINT_NAME) for name in inside.runs] + list(inside.checkpoints)


def inside_grid(preset: Preset, runs_dir: Path, folder: Path, device: str, data_dir: str | None,
                progress: bool) -> None:
    """The [inside] evaluation: its family's measure table in `folder`, unless it is fresh there."""
    inside, checkpoints = preset.inside, inside_checkpoints(preset, runs_dir)
    csv, settings = folder / "measure.csv", folder / "evaluation.json"
    wanted = {**evaluation_settings(preset), **dataclasses.asdict(inside)}
    wanted["runs"], wanted["checkpoints"] = list(inside.runs), list(inside.checkpoints)  # as JSON reads them back
    if (settings.exists() and json.loads(settings.read_text()) == wanted
            and all(is_fresh(csv, Path(c.rpartition("=")[2])) for c in checkpoints)):
        return
    networks, data = load_family(checkpoints, inside.dataset, data_dir, granularity=preset.evaluation.granularity)
    evaluation = evaluation_config(preset, device)
    write_table(inside_vs_alone(networks, data, evaluation, progress=progress), csv, "measure")
    gaps, gaps_csv = loafing_gaps(networks, data, evaluation, progress=progress), folder / "loafing_gap.csv"
    if gaps.empty:  # no network of the family was trained alone: there is no gap to measure
        gaps_csv.unlink(missing_ok=True)
    else:
        write_table(gaps, gaps_csv, "loafing_gap")
    write_json(wanted, settings)


def run_variants(folders: Sequence[Path]) -> dict[str, str]:
    """Each run folder's run name -> its `variant` cell, from its config.json."""
    variants = {}
    for folder in folders:
        if (folder / CONFIG_NAME).exists():
            config = dataclasses.asdict(load_config(folder))
            variants[config["run"]] = run_identifiers(config, config["dataset"])["variant"]
    return variants


def collect_results(folders: Sequence[Path], results_dir: Path) -> dict[str, Path]:
    """Concatenate the CSVs of these folders (runs, the inside grid) into one tidy CSV per table in `results_dir`.
    Each run's `variant` is taken from its config.json (a CSV evaluated before the column existed has none)."""
    variants = run_variants(folders)
    sources = {"measure": ["measure.csv"], "destruct": [result_file(m) for m in MODES],
               "kl_trajectory": [KL_NAME], "train_log": [LOG_NAME], "loafing_gap": ["loafing_gap.csv"],
               "influence": [result_file("influence")]}
    written = {}
    for table, files in sources.items():
        parts = [read_table(folder / f, table) for folder in folders for f in files if (folder / f).exists()]
        parts = [part.assign(variant=part["run"].map(variants).fillna(part["variant"])) for part in parts]
        if parts:
            written[table] = results_dir / TABLES[table].file
            write_table(one_row_per_key(pd.concat(parts, ignore_index=True), table), written[table], table)
    return written
