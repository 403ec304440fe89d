"""Results CSVs and the figures drawn from them, from the user's side: impossible values are refused naming the file
and the row, a file that is no results table is skipped with a warning, block-level and unit-level rows never pool
into one number, a host measured in a wider space shows its ordered plan, and constant columns raise no numpy
warning."""
from __future__ import annotations

import re
import shutil
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest

from loafing.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "results" / "quick"
# A three-block ViT small enough to train in a second on digits; Adam lets it learn something in three epochs.
VIT = ["--model", "timm:vit_tiny_patch16_224", *(f"--model-arg={arg}" for arg in (
    "img_size=32", "patch_size=8", "depth=3", "embed_dim=32", "num_heads=2"))]
TINY = ["--dataset", "digits", "--batch-size", "32", "--optimizer", "adamw", "--lr", "3e-3", "--monitor-calib-size", "32",
        "--device", "cpu", "--quiet"]


def cli(*args) -> int:
    """Run the `loafing` CLI in-process (for module fixtures, which cannot use `run_cli`); its exit code."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["loafing", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            main()
    return exit_info.value.code


def one_line_error(code: int, err: str, *parts: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("loafing: error:"), err
    assert all(part in lines[0] for part in parts), err


def markdown_rows(path: Path) -> dict[str, dict[str, str]]:
    """A markdown table written by `loafing figures`: first cell -> {column: cell}."""
    lines = [line for line in path.read_text().splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    return {row[0]: dict(zip(header, row)) for row in rows}


def copy_quick(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True)
    for name in names:
        shutil.copy(QUICK / name, folder / name)
    return folder


# ---------------------------------------------------------------- impossible values and files that are no table


@pytest.mark.parametrize("file, column, value, figure", [
    ("measure.csv", "top1", "150", "table1"),
    ("measure.csv", "top1", "-20", "fig4"),
    ("measure.csv", "top1", "inf", "fig5"),
    ("measure.csv", "loss", "-0.5", "table1"),
    ("destruct.csv", "drop", "250", "fig6"),
    ("train_log.csv", "test_top1_recalibrated", "100.5", "figr2"),
    ("kl_trajectory.csv", "kl", "-inf", "fig7"),
])
def test_impossible_values_are_refused_naming_the_file_and_row(run_cli, tmp_path, file, column, value, figure):
    results = copy_quick(tmp_path / "results", file)
    raw = pd.read_csv(results / file, dtype=str, keep_default_na=False)
    raw.loc[3, column] = value  # the 4th data row: line 5 of the file
    raw.to_csv(results / file, index=False)
    code, _, err = run_cli("figures", "--results", results, "--out", tmp_path / "out", "--only", figure)
    one_line_error(code, err, str(results / file), f"column '{column}'", "data row 4 (line 5)", value)
    assert not (tmp_path / "out").exists()  # nothing written, not even the folder


@pytest.mark.parametrize("content", [
    b"\x00" * 1000,  # zeros: UTF-8, one line, no newline (read as a table with no rows)
    (ROOT / "figures" / "quick" / "fig4.png").read_bytes(),
    b"PK\x03\x04\x14\x00\x00\x00\x08\x00",  # a zip (a torch checkpoint) cut short
    bytes(range(256)) * 4,
    b"hello,world\n1,2\n",  # a CSV, but not of ours
])
def test_a_file_that_is_no_results_table_is_skipped_with_a_warning(run_cli, tmp_path, content):
    results = copy_quick(tmp_path / "results", "destruct.csv")
    (results / "measure.csv").write_bytes(content)
    code, out, err = run_cli("figures", "--results", results, "--out", tmp_path / "out", "--only", "fig4",
                             "--only", "fig6")
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("loafing: warning:") and "measure.csv" in lines[0], err
    assert "not a results table" in lines[0]
    assert re.search(r"skipped 1: fig4 needs measure rows \(measure\.csv is not a results table\)", out), out
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["fig6.png"]


def test_a_results_table_that_does_not_parse_is_still_an_error(run_cli, tmp_path):
    results = copy_quick(tmp_path / "results", "measure.csv")
    text = (results / "measure.csv").read_text().splitlines()
    (results / "measure.csv").write_text("\n".join(text[:3] + ['"unclosed,quote'] + text[3:]) + "\n")
    code, _, err = run_cli("figures", "--results", results, "--out", tmp_path / "out", "--only", "fig4")
    one_line_error(code, err, "measure.csv")


# ---------------------------------------------------------------- block and unit rows; the ordered plan of a host


@pytest.fixture(scope="module")
def vits(tmp_path_factory) -> dict[str, Path]:
    """A CT ViT of three blocks, the same architecture's first block trained alone (`--plan "[1]"`), and its first
    three units trained alone in the unit view."""
    root = tmp_path_factory.mktemp("vits")
    brief = ["--epochs", "1", "--train-size", "64"]  # only the host's sub-networks need to have learnt something
    runs = {"host": ["--epochs", "3", "--train-size", "512"], "alone": [*brief, "--plan", "[1]"],
            "units": [*brief, "--granularity", "unit", "--plan", "[1,2,3]"]}
    for name, extra in runs.items():
        assert cli("train", *VIT, *TINY, *extra, "--out", root / name) == 0
    return {name: root / name / "checkpoint.pt" for name in runs}


def measure(ckpt: Path, out: Path, *args: str) -> pd.DataFrame:
    assert cli("measure", "--ckpt", ckpt, "--out", out, "--quiet", *args) == 0
    return pd.read_csv(out)


def collect(folder: Path, *tables: pd.DataFrame) -> Path:
    """A results folder holding these measure tables as one (what a study collects from its runs)."""
    folder.mkdir(parents=True, exist_ok=True)
    pd.concat(tables, ignore_index=True).to_csv(folder / "measure.csv", index=False)
    return folder


def test_inside_table_takes_the_ordered_plan_of_a_host_measured_in_the_stochastic_space(vits, run_cli, tmp_path):
    host = measure(vits["host"], tmp_path / "host.csv", "--space", "stochastic")
    alone = measure(vits["alone"], tmp_path / "alone.csv")
    results = collect(tmp_path / "results", host, alone)
    code, _, err = run_cli("figures", "--results", results, "--out", tmp_path / "out", "--only", "inside")
    assert code == 0, err
    one_block = host[host["depths"].astype(str) == "1"]
    assert sorted(one_block["plan"]) == ["[1]", "[2]", "[3]"]  # the stochastic space's three one-block plans
    ordered = one_block.loc[one_block["plan"] == "[1]", "top1"].item()
    assert f"{one_block['top1'].mean():.2f}" != f"{ordered:.2f}"  # the test would see a mix of them
    row = markdown_rows(tmp_path / "out" / "inside.md")["1"]
    assert row["timm:vit_tiny_patch16_224"] == f"{ordered:.2f}"
    assert row["trained alone"] == f"{alone.loc[alone['is_main'], 'top1'].item():.2f}"


def test_block_and_unit_rows_of_one_results_folder_are_never_pooled(vits, run_cli, tmp_path):
    blocks = measure(vits["host"], tmp_path / "blocks.csv")
    units = measure(vits["host"], tmp_path / "units.csv", "--granularity", "unit")
    alone = measure(vits["alone"], tmp_path / "alone.csv")
    results = collect(tmp_path / "results", blocks, units, alone)
    code, _, err = run_cli("figures", "--results", results, "--out", tmp_path / "out", "--only", "table1", "--only",
                           "inside")
    assert code == 0, err
    means = {view: f"{rows.loc[~rows['is_main'], 'top1'].mean():.2f}" for view, rows in (("block", blocks),
                                                                                             ("unit", units))}
    tables = {path.stem.rpartition("-")[2]: path for path in (tmp_path / "out").glob("table1*.md")}
    assert sorted(tables) == ["block", "unit"], tables
    for view, path in tables.items():
        assert markdown_rows(path)["CT"]["sub-networks mean"] == means[view], (view, path.read_text())
        assert f"{view})" in path.read_text().splitlines()[0]  # the title says which view
    # The block view's grid sets the host's first block beside the block trained alone; the unit view's "1" is
    # the first block's attention unit, not that network.
    inside = {path.stem.rpartition("-")[2]: markdown_rows(path) for path in (tmp_path / "out").glob("inside*.md")}
    first_block = blocks.loc[blocks["plan"] == "[1]", "top1"].item()
    assert inside["block"]["1"]["timm:vit_tiny_patch16_224"] == f"{first_block:.2f}"
    assert "trained alone" not in inside["unit"]["timm:vit_tiny_patch16_224 (6)"]  # the host's own row


@pytest.mark.parametrize("view", [["--granularity", "unit"], []])
def test_inside_vs_alone_is_defined_at_block_level(vits, run_cli, tmp_path, view):
    # Three units trained alone (the first block and the second's attention) against the host's first three units
    # (--granularity unit), or against its first three blocks (each network in its own view).
    code, _, err = run_cli("inside-vs-alone", "--ckpt", vits["host"], "--ckpt", vits["units"], *view, "--out",
                           tmp_path / "out", "--quiet")
    one_line_error(code, err, "block by block")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- constant columns


@pytest.mark.parametrize("seeds", [(0,), (0, 1)])
def test_constant_columns_and_one_seed_raise_no_numpy_warning(run_cli, tmp_path, seeds):
    results = tmp_path / "results"
    results.mkdir()
    constant = {"top1": "50.0", "drop": "1.0", "kl": "0.5", "test_top1_recalibrated": "50.0", "loss": "1.0",
                "seconds": "2.0", "examples_per_s": "100.0", "peak_memory_mib": "900.0"}
    for file in ("measure.csv", "destruct.csv", "kl_trajectory.csv", "train_log.csv"):
        raw = pd.read_csv(QUICK / file, dtype=str, keep_default_na=False)
        raw = raw[raw["seed"].astype(int).isin(seeds)]
        for column, value in constant.items():
            if column in raw.columns:
                raw[column] = value
        raw.to_csv(results / file, index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        code, _, err = run_cli("figures", "--results", results, "--out", tmp_path / "out", *(
            arg for name in ("table1", "tabler3", "tabler4", "fig3", "fig5", "fig6", "fig7", "figr2", "figr3")
            for arg in ("--only", name)))
    assert code == 0 and "Warning" not in err, err
