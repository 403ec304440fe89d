"""What a study computes from its trained runs: each run's measure and destruct tables, the inside-vs-alone grid,
which of them are fresh, and the tidy CSVs collected from them (the evaluation half of `loafing.reproduce`).

A result is fresh when its record says it was made from the run's checkpoint as it is now (its sha256), on the data
the study is given (its fingerprint), with the study's evaluation settings (`loafing.provenance`)."""
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
from loafing.hub import sha256_of
from loafing.provenance import (data_fingerprint, read_origin, result_is_current, result_record,
                                sidecar, write_result_record)
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


def is_legacy_run(out: Path) -> bool:
    """Whether a run folder comes from before runs recorded their data (its result CSVs then have no records)."""
    return (read_origin(out) or {}).get("data") is None


def results_are_fresh(spec: RunSpec, out: Path, preset: Preset, fingerprint: dict[str, Any]) -> bool:
    """Whether the run folder `out` holds every evaluation the spec asks for, made from its checkpoint on the data
    of `fingerprint` with the study's settings, and no other."""
    settings = out / "evaluation.json"
    if not settings.exists() or json.loads(settings.read_text()) != evaluation_settings(preset):
        return False
    jobs = evaluation_jobs(spec, preset)
    if any((out / result_file(job)).exists() for job in JOBS if job not in jobs):
        return False
    made_from = result_record(sha256_of(out / CHECKPOINT_NAME), fingerprint, evaluation_settings(preset))
    legacy = is_legacy_run(out)
    return all(result_is_current(out / result_file(job), made_from, legacy, out / CHECKPOINT_NAME) for job in jobs)


def evaluate_run(spec: RunSpec, out: Path, preset: Preset, device: str,
                 fingerprint: dict[str, Any]) -> dict[str, float]:
    """Measure and destruct the trained run in `out` on the study's data (of `fingerprint`) as the spec asks, unless
    fresh; seconds per job."""
    checkpoint, settings = out / CHECKPOINT_NAME, out / "evaluation.json"
    wanted, jobs = evaluation_settings(preset), evaluation_jobs(spec, preset)
    stale = not settings.exists() or json.loads(settings.read_text()) != wanted
    for name in JOBS:  # results of other evaluation settings, or of evaluations not asked for
        if stale or name not in jobs:
            (out / result_file(name)).unlink(missing_ok=True)
            sidecar(out / result_file(name)).unlink(missing_ok=True)
    if stale:
        write_json(wanted, settings)
    loaded, evaluation, seconds = None, evaluation_config(preset, device), {}
    made_from, legacy = result_record(sha256_of(checkpoint), fingerprint, wanted), is_legacy_run(out)
    for job in jobs:
        csv = out / result_file(job)
        start = time.perf_counter()
        if not result_is_current(csv, made_from, legacy, checkpoint):
            if loaded is None:
                loaded = load_model(checkpoint, granularity=evaluation.granularity)
                data = evaluation_data(loaded, data_dir=spec.config.data_dir)
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
            write_result_record(csv, made_from)
        seconds[job] = time.perf_counter() - start
    return seconds


def inside_checkpoints(preset: Preset, runs_dir: Path) -> list[str]:
    """The [inside] family's checkpoints: this study's runs', then the study's checkpoint files."""
    inside = preset.inside
    return [str(runs_dir / name / CHECKPOINT_NAME) for name in inside.runs] + list(inside.checkpoints)


def inside_grid(preset: Preset, runs_dir: Path, folder: Path, device: str, data_dir: str | None,
                progress: bool) -> None:
    """The [inside] evaluation: its family's measure and gap tables in `folder`, unless the ones there were made
    from these checkpoints (their sha256), on this data, with these settings."""
    inside, checkpoints = preset.inside, inside_checkpoints(preset, runs_dir)
    csv, settings, gaps_csv = folder / "measure.csv", folder / "evaluation.json", folder / "loafing_gap.csv"
    wanted = {**evaluation_settings(preset), **dataclasses.asdict(inside)}
    wanted["runs"], wanted["checkpoints"] = list(inside.runs), list(inside.checkpoints)  # as JSON reads them back
    networks, data = load_family(checkpoints, inside.dataset, data_dir, granularity=preset.evaluation.granularity)
    paths = [Path(text.rpartition("=")[2]) for text in checkpoints]
    # The data folder as evaluation_data reads it: the one given, else the first network's own.
    fingerprint = data_fingerprint(data, data_dir or networks[0].config.get("data_dir"))
    made_from = result_record([sha256_of(path) for path in paths], fingerprint, wanted)
    legacy = (all(is_legacy_run(runs_dir / name) for name in inside.runs) and settings.exists()
              and json.loads(settings.read_text()) == wanted)  # tables from before records: their age decides
    if all(result_is_current(table, made_from, legacy, path) for path in paths
           for table in (csv, gaps_csv) if table == csv or table.exists()):
        return
    evaluation = evaluation_config(preset, device)
    write_table(inside_vs_alone(networks, data, evaluation, progress=progress), csv, "measure")
    gaps = loafing_gaps(networks, data, evaluation, progress=progress)
    if gaps.empty:  # no network of the family was trained alone: there is no gap to measure
        gaps_csv.unlink(missing_ok=True)
        sidecar(gaps_csv).unlink(missing_ok=True)
    else:
        write_table(gaps, gaps_csv, "loafing_gap")
        write_result_record(gaps_csv, made_from)
    write_result_record(csv, made_from)
    write_json(wanted, settings)


def run_variants(folders: Sequence[Path]) -> dict[str, str]:
    """Each run folder's run name -> its `variant` cell, from its config.json."""
    variants = {}
    for folder in folders:
        if (folder / CONFIG_NAME).exists():
            config = dataclasses.asdict(load_config(folder))
            variants[config["run"]] = run_identifiers(config, config["dataset"])["variant"]
    return variants


def _run_variant(rows: pd.DataFrame, variants: dict[str, str]) -> pd.Series:
    """Each row's run's variant as its run folder says, else the row's own (a run whose folder is gone)."""
    mapped = rows["run"].map(variants).astype(object)  # all-missing maps come back float: keep them text
    return mapped.where(mapped.notna(), rows["variant"].astype(object))


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
        parts = [part.assign(variant=_run_variant(part, variants)) for part in parts]
        if parts:
            written[table] = results_dir / TABLES[table].file
            write_table(one_row_per_key(pd.concat(parts, ignore_index=True), table), written[table], table)
    return written
