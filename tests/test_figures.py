"""Figures and tables from small synthetic results CSVs (no training)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import itertools  # noqa: E402
from pathlib import Path  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from loafing.errors import LoafingError, LoafingWarning  # noqa: E402
from loafing.figures import (  # noqa: E402
    FIGURES,
    make_figures,
    plot_inside_vs_alone,
    table_cost,
    table_inside_grid,
    table_main_and_subnetworks,
)
from loafing.figures.select import ordered_plan_rows, reference_lam, run_scheme  # noqa: E402
from loafing.figures.style import Schemes, figure_legend, method_styles, schemes_of  # noqa: E402
from loafing.methods import METHODS  # noqa: E402
from loafing.schema import TABLES, read_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# A toy network with two stages of 2 and 3 blocks: 2 * 3 = 6 ordered plans, the last one the main network.
STAGES = ([1, 2], [3, 4, 5])
MAIN_PLAN = "[1,2] [3,4,5]"
RUNS = (  # run, method, lam, seed, trained_plan, space_size
    ("ct-s0", "ct", 1.0, 0, "", ""),
    ("ct-s1", "ct", 1.0, 1, "", ""),
    ("st-s0", "st", 1.0, 0, "", ""),
    ("st-s1", "st", 1.0, 1, "", ""),
    ("st-lam2-s0", "st", 2.0, 0, "", ""),
    ("st3-s0", "st", 1.0, 0, "", 3),
    ("st3-s1", "st", 1.0, 1, "", 3),
    ("alone-a", "ct", 1.0, 0, "[1] [3]", ""),
    ("alone-b", "ct", 1.0, 0, "[1,2] [3]", ""),
    ("sd-s0", "stochastic-depth", 1.0, 0, "", ""),  # the appendix's baselines and sampling rules
    ("distill-s0", "self-distillation", 1.0, 0, "", ""),
    ("layer-s0", "layer-supervision", 1.0, 0, "", ""),
    ("stage-s0", "stage-supervision", 1.0, 0, "", ""),
    ("st-raw-s0", "st", 1.0, 0, "", ""),
    ("st-stochastic-s0", "st", 1.0, 0, "", ""),
)
SAMPLING = {"st-raw-s0": "raw", "st-stochastic-s0": "stochastic"}  # ST's other runs sample ordered plans


def ordered_plans() -> list[tuple[str, str, int]]:
    """(plan, depths, n_blocks) of every ordered plan of the toy network."""
    plans = []
    for d1, d2 in itertools.product(range(1, 3), range(1, 4)):
        blocks = (STAGES[0][:d1], STAGES[1][:d2])
        plan = " ".join("[" + ",".join(str(b) for b in stage) + "]" for stage in blocks)
        plans.append((plan, f"{d1}-{d2}", d1 + d2))
    return plans


def style_columns(method: str) -> dict:
    """The method_* columns a writer fills from the method registry (empty for a method it does not know)."""
    if method not in METHODS:
        return {"method_label": "", "method_colour": "", "method_role": "", "method_order": ""}
    entry = METHODS[method]
    return {"method_label": entry.label, "method_colour": entry.colour, "method_role": entry.role,
            "method_order": list(METHODS).index(method)}


def run_ids(run: tuple, model: str = "toynet", dataset: str = "digits") -> dict:
    """The identifying columns every results row carries (ST's own columns empty in other methods' rows)."""
    name, method, lam, seed, trained_plan, space_size = run
    st = method == "st"
    return {"run": name, "model": model, "width_mult": 1.0, "method": method, **style_columns(method),
            "lam": lam if st else "", "seed": seed, "dataset": dataset, "trained_plan": trained_plan,
            "space_size": space_size if st else "", "sampling": SAMPLING.get(name, "ordered") if st else ""}


def measure_rows(runs: tuple = RUNS, model: str = "toynet", dataset: str = "digits", seed: int = 0) -> pd.DataFrame:
    """measure.csv rows: every plan of each full run, the trained plan alone for the other runs."""
    rng = np.random.default_rng(seed)
    rows = []
    for run in runs:
        trained_plan = run[4]
        for plan, depths, n_blocks in ordered_plans():
            if trained_plan and plan != trained_plan:
                continue
            is_main = plan == (trained_plan or MAIN_PLAN)
            rows.append({**run_ids(run, model, dataset), "plan": plan, "depths": depths, "n_blocks": n_blocks,
                         "is_main": is_main, "top1": float(rng.uniform(40, 95)), "top5": 99.0, "loss": 0.5,
                         "n_examples": 100, "kl": float(rng.uniform(0, 1)), "recalibrated": True,
                         "calib_size": 50, "calib_seed": 0, "space": "ordered"})
    return pd.DataFrame(rows)


def destruct_rows() -> pd.DataFrame:
    """destruct.csv rows for the full runs: an intact row and a few rows per mode."""
    rng = np.random.default_rng(1)
    rows = []
    for run in RUNS:
        if run[4]:
            continue
        cases = [("delete-one", 0, "")] + [("delete-one", 1, str(layer)) for layer in (2, 4, 5)]
        cases += [("delete-many", 1, "2"), ("delete-many", 1, "4"), ("delete-many", 2, "2,4"),
                  ("delete-many", 2, "4,5")]
        cases += [("permute", 1, "[1,2] [3,5,4]"), ("permute", 1, "[1,2] [4,3,5]"), ("permute", 2, "[1,2] [5,3,4]")]
        for mode, n, layers in cases:
            rows.append({**run_ids(run), "mode": mode, "n": n, "layers": layers, "plan": MAIN_PLAN,
                         "depths": "2-3", "n_blocks": 5, "is_main": n == 0, "top1": 90.0,
                         "drop": 0.0 if n == 0 else float(rng.uniform(0, 10)), "top5": 99.0, "loss": 0.5,
                         "n_examples": 100, "kl": 0.1, "recalibrated": True, "calib_size": 50, "calib_seed": 0,
                         "sampled": False})
    return pd.DataFrame(rows)


def kl_rows() -> pd.DataFrame:
    """kl_trajectory.csv rows: every plan of CT and full ST runs at epochs 1 and 2."""
    rng = np.random.default_rng(2)
    rows = []
    for run in RUNS:
        if run[4] or run[5]:
            continue
        for epoch, (plan, depths, n_blocks) in itertools.product((1, 2), ordered_plans()):
            rows.append({**run_ids(run), "epoch": epoch, "plan": plan, "depths": depths, "n_blocks": n_blocks,
                         "is_main": plan == MAIN_PLAN, "kl": float(rng.uniform(0, 1)), "top1": 50.0})
    return pd.DataFrame(rows)


def train_log_rows() -> pd.DataFrame:
    """train_log.csv rows: three epochs per run, with seconds that differ between runs."""
    rng = np.random.default_rng(3)
    rows = []
    for run in RUNS:
        for epoch in (1, 2, 3):
            top1 = 30.0 * epoch + float(rng.uniform(0, 5))
            rows.append({**run_ids(run), "epoch": epoch, "lr": 0.1, "loss": 2.0 / epoch, "ce": 2.0 / epoch, "kl": 0.1,
                         "test_top1_recalibrated": top1, "test_loss_recalibrated": 1.0,
                         "test_top1_running_bn": top1 - 5, "test_loss_running_bn": 1.2,
                         "seconds": float(rng.uniform(1, 3)), "examples_per_s": float(rng.uniform(100, 200)),
                         "peak_memory_mib": float(rng.uniform(500, 900)), "memory_kind": "cpu_peak_rss"})
    return pd.DataFrame(rows)


def influence_rows() -> pd.DataFrame:
    """influence.csv rows for CT's and ST's first runs: the toy network's blocks, the first of each stage fixed (and
    the first of stage 2 changing the shape, so without an influence)."""
    rng = np.random.default_rng(4)
    rows = []
    for run in RUNS[:4:2]:
        for stage, blocks in enumerate(STAGES, start=1):
            for block in blocks:
                deletable = block != blocks[0]
                cosine = float("nan") if block == 3 else float(rng.uniform(0.5, 1))
                rows.append({**run_ids(run), "block": block, "stage": stage, "deletable": deletable,
                             "cosine": cosine, "influence": 1 - cosine,
                             "top1_drop": float(rng.uniform(0, 10)) if deletable else float("nan"),
                             "n_examples": 100, "recalibrated": True, "calib_size": 50, "calib_seed": 0})
    return pd.DataFrame(rows)


def gap_rows() -> pd.DataFrame:
    """loafing_gap.csv rows: a sub-network trained alone, inside CT's and ST's first runs."""
    rows = []
    for run, top1 in zip(RUNS[:4:2], (60.0, 90.0)):
        rows.append({**run_ids(run), "depths": "1-1", "architecture": "", "plan": "[1] [3]", "alone_run": "alone",
                     "top1_inside": top1, "top1_alone": 92.0, "gap": top1 - 92.0, "gap_ci_low": top1 - 94.0,
                     "gap_ci_high": top1 - 90.0, "n_examples": 450, "recalibrated": True, "calib_size": 50,
                     "calib_seed": 0})
    return pd.DataFrame(rows)


def write_results(folder: Path) -> Path:
    """Write the synthetic CSVs into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    measure_rows().to_csv(folder / "measure.csv", index=False)
    destruct_rows().to_csv(folder / "destruct.csv", index=False)
    influence_rows().to_csv(folder / "influence.csv", index=False)
    gap_rows().to_csv(folder / "loafing_gap.csv", index=False)
    kl_rows().to_csv(folder / "kl_trajectory.csv", index=False)
    train_log_rows().to_csv(folder / "train_log.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return write_results(tmp_path_factory.mktemp("results"))


def test_every_entry_writes_non_empty_files(results, tmp_path):
    outcomes = make_figures(results, tmp_path / "out")
    assert [o.name for o in outcomes] == list(FIGURES)
    for outcome in outcomes:
        assert outcome.skipped is None, (outcome.name, outcome.skipped)
        suffixes = {p.suffix for p in outcome.paths}
        assert suffixes == ({".png", ".md"} if FIGURES[outcome.name].kind == "table" else {".png"})
        for path in outcome.paths:
            assert path.exists() and path.stat().st_size > 0
            assert path.name.startswith(outcome.name)
    assert not list((tmp_path / "out").glob(".*.tmp"))


@pytest.mark.parametrize("name", [n for n, spec in FIGURES.items() if spec.kind == "figure"])
def test_figures_draw_something(results, name):
    spec = FIGURES[name]
    fig = spec.function(read_table(results / TABLES[spec.table].file, spec.table))
    try:
        assert fig.axes
        drawn = sum(len(ax.lines) + len(ax.collections) + len(ax.patches) for ax in fig.axes)
        assert drawn > 0
    finally:
        plt.close(fig)


def test_table1_matches_hand_calculation(results):
    table = table_main_and_subnetworks(read_table(results / "measure.csv", "measure")).set_index("scheme")
    measure = measure_rows()
    ct = measure[measure["run"].isin(["ct-s0", "ct-s1"])]
    sub = ct[~ct["is_main"]]
    run_means = sub.groupby("run")["top1"].mean()
    run_stds = sub.groupby("run")["top1"].std(ddof=0)
    assert table.loc["CT", "seeds"] == 2
    assert table.loc["CT", "sub-networks mean"] == pytest.approx(run_means.mean())
    assert table.loc["CT", "sub-networks std"] == pytest.approx(run_stds.mean())
    assert table.loc["CT", "sub-networks mean seed std"] == pytest.approx(run_means.std(ddof=1))
    assert table.loc["CT", "main top-1"] == pytest.approx(ct.loc[ct["is_main"], "top1"].mean())
    # Full ST is named by its measured space size; the λ=2 run is not at the reference λ.
    assert list(table.index) == ["CT", "ST-3", "ST-6", "ST (raw)", "ST (stochastic)", "Stochastic depth",
                                 "Self-distillation", "CT+layer supervision", "CT+stage supervision"]
    assert table.loc["ST-6", "seeds"] == 2
    st = measure[measure["run"].isin(["st-s0", "st-s1"]) & measure["is_main"]]
    assert table.loc["ST-6", "main top-1"] == pytest.approx(st["top1"].mean())


def test_table1_describes_plans_and_gives_intervals_over_seeds_only_from_three(results):
    table = table_main_and_subnetworks(read_table(results / "measure.csv", "measure")).set_index("scheme")
    measure = measure_rows()
    assert table.loc["CT", "main top-1 95% CI (seeds)"] == "–"  # two seeds: no interval
    # ST-3 vs CT, plan by plan (each plan averaged over seeds): mean and range, no test over plans
    subs = measure[~measure["is_main"]]

    def per_plan(runs):
        return subs[subs["run"].isin(runs)].groupby("plan")["top1"].mean()
    diff = (per_plan(["st3-s0", "st3-s1"]) - per_plan(["ct-s0", "ct-s1"])).to_numpy()
    assert len(diff) == 5
    assert table.loc["ST-3", "sub-networks − CT, same plan (mean)"] == pytest.approx(diff.mean())
    assert table.loc["ST-3", "same plan (range)"] == f"{diff.min():+.2f} to {diff.max():+.2f}"
    assert table.loc["ST-3", "− CT, same seed (95% CI)"] == "–"
    assert not any("p (" in column for column in table.columns)


def test_table1_intervals_over_three_seeds_match_hand_calculation_and_stay_in_range():
    runs = tuple((f"{name}-s{seed}", method, 1.0, seed, "", size)
                 for name, method, size in (("ct", "ct", ""), ("st3", "st", 3)) for seed in (0, 1, 2))
    measure = measure_rows(runs=runs)
    main = measure["is_main"]
    measure.loc[main & (measure["run"] == "ct-s0"), "top1"] = 99.9  # near the bound: t-interval reaches past 100
    measure.loc[main & (measure["run"] == "ct-s1"), "top1"] = 97.0
    measure.loc[main & (measure["run"] == "ct-s2"), "top1"] = 99.95
    dropped = measure["run"].str.startswith("st3") & (measure["plan"] == measure.loc[~main, "plan"].iloc[0])
    measure = measure[~dropped]  # a plan ST-3 did not measure is left out of the same-seed comparison
    table = table_main_and_subnetworks(measure).set_index("scheme")
    values = np.array([99.9, 97.0, 99.95])
    half = 4.302653 * values.std(ddof=1) / np.sqrt(3)  # t(0.975, 2)
    assert values.mean() + half > 100
    assert table.loc["CT", "main top-1 95% CI (seeds)"] == f"[{values.mean() - half:.2f}, 100.00]"
    subs = measure[~measure["is_main"]]
    common = set(subs.loc[subs["run"].str.startswith("st3"), "plan"])
    by_seed = [subs[(subs["run"] == f"st3-s{s}") & subs["plan"].isin(common)]["top1"].mean()
               - subs[(subs["run"] == f"ct-s{s}") & subs["plan"].isin(common)]["top1"].mean() for s in range(3)]
    by_seed = np.array(by_seed)
    half = 4.302653 * by_seed.std(ddof=1) / np.sqrt(3)
    assert table.loc["ST-3", "− CT, same seed (95% CI)"] == f"[{by_seed.mean() - half:.2f}, {by_seed.mean() + half:.2f}]"


def test_table1_single_seed_has_no_seed_std():
    measure = measure_rows(runs=RUNS[:1] + RUNS[2:3])
    table = table_main_and_subnetworks(measure).set_index("scheme")
    assert np.isnan(table.loc["CT", "main top-1 seed std"])
    assert np.isnan(table.loc["CT", "sub-networks mean seed std"])


def test_tabler4_time_ratio_is_ratio_of_summed_seconds(results):
    table = table_cost(read_table(results / "train_log.csv", "train_log")).set_index("scheme")
    log = train_log_rows()
    seconds = log.groupby("run")["seconds"].sum()
    ct_time = seconds[["ct-s0", "ct-s1"]].mean()
    st_time = seconds[["st-s0", "st-s1"]].mean()
    assert table.loc["CT", "training time (s)"] == pytest.approx(ct_time)
    assert table.loc["ST", "time vs CT"] == pytest.approx(st_time / ct_time)
    assert table.loc["CT", "time vs CT"] == pytest.approx(1.0)
    st_memory = log.loc[log["run"].isin(["st-s0", "st-s1"]), "peak_memory_mib"].max()
    ct_memory = log.loc[log["run"].isin(["ct-s0", "ct-s1"]), "peak_memory_mib"].max()
    assert table.loc["ST", "memory vs CT"] == pytest.approx(st_memory / ct_memory)
    assert "alone" not in table.index


def test_reference_lam_is_the_lam_with_most_st_runs():
    measure = measure_rows()
    assert reference_lam(measure) == 1.0
    more_at_two = measure_rows(runs=(
        ("st-a", "st", 1.0, 0, "", ""), ("st-b", "st", 2.0, 0, "", ""), ("st-c", "st", 2.0, 1, "", ""),
        ("ct-a", "ct", 5.0, 0, "", ""), ("ct-b", "ct", 5.0, 1, "", ""), ("ct-c", "ct", 5.0, 2, "", "")))
    assert reference_lam(more_at_two) == 2.0
    tie = measure_rows(runs=(("st-a", "st", 3.0, 0, "", ""), ("st-b", "st", 0.5, 0, "", "")))
    assert reference_lam(tie) == 0.5
    assert reference_lam(measure_rows(runs=RUNS[:2])) is None


def test_missing_column_is_a_one_line_error(results, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    read_table(results / "measure.csv", "measure").drop(columns=["top1"]).to_csv(broken / "measure.csv", index=False)
    with pytest.raises(LoafingError) as error:
        make_figures(broken, tmp_path / "out", ["fig4"])
    assert "top1" in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_csv_is_skipped_with_a_reason(tmp_path):
    outcomes = make_figures(tmp_path, tmp_path / "out", ["fig6", "table1"])
    assert [(o.name, o.skipped) for o in outcomes] == [("fig6", "needs destruct rows"),
                                                      ("table1", "needs measure rows")]
    assert all(o.paths == [] for o in outcomes)
    assert (tmp_path / "out").is_dir()


def test_fig1_skipped_when_no_architecture_is_inside_and_alone(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    measure_rows(runs=RUNS[:4]).to_csv(folder / "measure.csv", index=False)
    [outcome] = make_figures(folder, tmp_path / "out", ["fig1"])
    assert outcome.paths == []
    assert "both inside" in outcome.skipped


def test_figure_needing_more_data_is_skipped(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    measure_rows(runs=RUNS[:4]).to_csv(folder / "measure.csv", index=False)
    [outcome] = make_figures(folder, tmp_path / "out", ["figr3"])
    assert outcome.skipped is not None and "λ" in outcome.skipped


def test_unknown_name_lists_valid_names(results, tmp_path):
    with pytest.raises(LoafingError) as error:
        make_figures(results, tmp_path, ["fig99"])
    message = str(error.value)
    assert "fig99" in message and all(name in message for name in FIGURES)


def test_fig1_across_cifar_resnets_labels_architectures():
    # ResNet-20 trained on its own; its architecture (depths 3-3-3) is also a sub-network of two ResNet-32 runs.
    def row(run, model, depths, is_main, top1):  # `architecture`: what the writer's model spec called it
        host = 5 if model == "resnet32-cifar" else 3
        return {**run_ids((run, "ct", 1.0, 0, "", ""), model=model), "depths": depths,
                "plan": ordered_plan_text(depths, (host, host, host)),
                "architecture": {"3-3-3": "ResNet20", "5-5-5": "ResNet32"}[depths],
                "n_blocks": sum(map(int, depths.split("-"))), "is_main": is_main, "top1": top1}
    rows = [row("small", "resnet20-cifar", "3-3-3", True, 91.7)]
    for run in ("host", "host-s1"):
        rows += [row(run, "resnet32-cifar", "3-3-3", False, 55.3), row(run, "resnet32-cifar", "5-5-5", True, 92.6)]
    fig = plot_inside_vs_alone(pd.DataFrame(rows))
    try:
        assert [tick.get_text() for tick in fig.axes[0].get_xticklabels()] == ["ResNet20"]
        legend_texts = [t.get_text() for t in fig.legends[0].get_texts()]
        assert legend_texts == ["trained alone", "inside resnet32-cifar"]
        assert len(fig.axes[0].patches) >= 2
    finally:
        plt.close(fig)


def test_fig1_shows_an_st_host_beside_the_ct_host_and_leaves_its_main_network_out_of_trained_alone():
    # The long CIFAR study's family: ResNet-20 by CT and by ST, and ResNet-8 (1-1-1) trained alone.
    def row(run, method, depths, is_main, top1, trained_plan=""):
        return {**run_ids((run, method, 1.0, 0, trained_plan, ""), model="resnet20-cifar"), "depths": depths,
                "plan": ordered_plan_text(depths, (3, 3, 3)),
                "architecture": {"1-1-1": "ResNet8", "3-3-3": "ResNet20"}[depths],
                "n_blocks": sum(map(int, depths.split("-"))), "is_main": is_main, "top1": top1}
    rows = [row("alone-1-1-1", "ct", "1-1-1", True, 80.0, "[1] [4] [7]"),
            row("ct", "ct", "1-1-1", False, 30.0), row("ct", "ct", "3-3-3", True, 88.0),
            row("st", "st", "1-1-1", False, 77.0), row("st", "st", "3-3-3", True, 87.0)]
    fig = plot_inside_vs_alone(pd.DataFrame(rows))
    try:
        legend_texts = [t.get_text() for t in fig.legends[0].get_texts()]
        assert legend_texts == ["trained alone", "inside resnet20-cifar", "inside resnet20-cifar, ST"]
        heights = sorted(round(p.get_height(), 1) for p in fig.axes[0].patches if p.get_height() > 0)
        assert heights == [30.0, 77.0, 80.0]  # one ResNet-8 bar per group; ST's main network is not "alone"
    finally:
        plt.close(fig)


def ordered_plan_text(depths: str, stage_sizes: tuple[int, ...]) -> str:
    """The ordered plan of `depths` ('1-1-2') in a body of `stage_sizes` blocks per stage, written by hand."""
    firsts = np.cumsum((0, *stage_sizes[:-1])) + 1
    return " ".join("[" + ",".join(str(first + i) for i in range(int(d))) + "]"
                    for first, d in zip(firsts, depths.split("-")))


def test_fig1_and_the_inside_grid_take_the_ordered_plan_of_a_host_measured_in_a_wider_space():
    # A CT ResNet-20 measured in the stochastic space holds 27 plans of depths 1-1-1; only "[1] [4] [7]" is the
    # ResNet-8 that Fig. 1 sets beside the ResNet-8 trained alone.
    def row(run, plan, is_main, top1, trained_plan=""):
        depths = "-".join(str(len(stage.split(","))) for stage in plan.split())
        return {**run_ids((run, "ct", 1.0, 0, trained_plan, ""), model="resnet20-cifar"), "plan": plan,
                "depths": depths, "architecture": "", "n_blocks": sum(map(int, depths.split("-"))),
                "is_main": is_main, "top1": top1, "granularity": "block"}
    rows = [row("alone", "[1] [4] [7]", True, 80.0, trained_plan="[1] [4] [7]"),
            row("ct", "[1,2,3] [4,5,6] [7,8,9]", True, 88.0), row("ct", "[1] [4] [7]", False, 30.0),
            row("ct", "[2] [5] [9]", False, 60.0), row("ct", "[3] [4] [8]", False, 50.0),
            row("ct", "[1b] [4] [7]", False, 10.0)]
    measure = pd.DataFrame(rows).assign(seed=np.nan)  # as a foreign checkpoint's rows: no seed
    assert ordered_plan_text("1-1-1", (3, 3, 3)) == "[1] [4] [7]"
    assert ordered_plan_rows(measure)["top1"].tolist() == [80.0, 88.0, 30.0]
    fig = plot_inside_vs_alone(measure)
    try:
        heights = sorted(round(p.get_height(), 1) for p in fig.axes[0].patches if p.get_height() > 0)
        assert heights == [30.0, 80.0]  # not the mean of every 1-1-1 plan (37.5)
    finally:
        plt.close(fig)
    grid = table_inside_grid(measure).set_index("sub-network \\ main network")
    assert grid.loc["1-1-1"].dropna().tolist() == [30.0, 80.0]


def test_several_models_get_one_file_each(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    both = pd.concat([measure_rows(), measure_rows(model="othernet", seed=5)], ignore_index=True)
    both.to_csv(folder / "measure.csv", index=False)
    outcomes = make_figures(folder, tmp_path / "out", ["fig4", "fig1"])
    names = sorted(p.name for o in outcomes for p in o.paths)
    assert names == ["fig1.png", "fig4-othernet-digits.png", "fig4-toynet-digits.png"]


def test_schemes_and_colours():
    assert run_scheme("CT", np.nan, np.nan) == "CT"
    assert run_scheme("CT", "[1] [3]", np.nan) == "alone"
    assert run_scheme("ST", np.nan, np.nan) == "ST"
    assert run_scheme("ST", np.nan, 48.0) == "ST-48"
    assert run_scheme("ST", np.nan, np.nan, "raw") == "ST (raw)"
    schemes = Schemes(method_styles(measure_rows()))
    assert schemes.colour("ST-48") == schemes.colour("ST-48") != schemes.colour("ST")
    assert len({schemes.colour(s) for s in ("CT", "ST", "alone", "ST-6", "ST-48")}) == 5
    # The colours and labels are the registry's, carried by the rows.
    assert schemes.colour("CT") == METHODS["ct"].colour and schemes.colour("ST") == METHODS["st"].colour
    assert schemes.order(["ST-48", "alone", "ST", "CT", "ST-6", "ST (raw)"]) == ["CT", "ST-6", "ST-48", "ST",
                                                                               "ST (raw)", "alone"]


def test_variants_of_one_method_are_schemes_of_their_own():
    assert run_scheme("ST++", np.nan, np.nan, "", "subnets=4") == "ST++ [subnets=4]"
    assert run_scheme("ST", np.nan, np.nan, "stochastic", "") == "ST (stochastic)"
    schemes = Schemes(method_styles(measure_rows()))
    assert schemes.order(["ST [a=1]", "CT", "ST", "ST-6"]) == ["CT", "ST-6", "ST", "ST [a=1]"]
    # The committed ST++ ablation on digits: each arm is its own row of Table 1, its numbers those of the runs the
    # study named after that arm (two seeds each), not a pool of every ST++ run.
    measure = read_table(ROOT / "results" / "st-plus-ablation" / "measure.csv", "measure")
    table = table_main_and_subnetworks(measure).set_index("scheme")
    arms = {"st-k4": "subnets=4", "st-small-inputs": "sub_resize_min=0.43",
            "st-plus-plus": "subnets=4, kl_logits=normalized, ce_logits=normalized, sub_resize_min=0.43"}
    assert len(table) == 8  # CT, ST and six ST++ arms
    colours = {label: schemes_of(measure).colour(label) for label in table.index}
    assert len(set(colours.values())) == 8  # each arm its own colour
    for arm, variant in arms.items():
        mains = measure[measure["run"].str.fullmatch(f"{arm}-seed[0-9]+") & measure["is_main"]]
        row = table.loc[f"ST++-144 [{variant}]"]  # the label: 144 ordered sub-networks, then the variant
        assert row["seeds"] == 2 and row["main top-1"] == pytest.approx(mains["top1"].mean())


def test_a_table_written_before_variants_reads_as_at_the_defaults(tmp_path):
    rows = measure_rows()
    rows.drop(columns=[c for c in ("variant",) if c in rows.columns]).to_csv(tmp_path / "measure.csv", index=False)
    assert (read_table(tmp_path / "measure.csv", "measure")["variant"] == "").all()


def test_a_method_the_rows_do_not_style_is_drawn_with_a_default_style(tmp_path):
    """Rows of a method no registry knew (empty method_* columns) are drawn under its name, after the others."""
    folder = tmp_path / "results"
    folder.mkdir()
    runs = RUNS[:4] + (("sgd-s0", "sgd", 1.0, 0, "", ""),)
    measure_rows(runs=runs).to_csv(folder / "measure.csv", index=False)
    styles = method_styles(read_table(folder / "measure.csv", "measure"))
    assert styles["sgd"].label == "sgd" and styles["sgd"].colour.startswith("#")
    assert styles["sgd"].colour not in {styles["ct"].colour, styles["st"].colour}
    [table1, figr8] = make_figures(folder, tmp_path / "out", ["table1", "figr8"])
    assert table1.skipped is None and figr8.skipped is None
    text = (tmp_path / "out" / "table1.md").read_text()
    assert [line.split(" | ")[0] for line in text.split("\n\n")[1].splitlines()[2:]] == ["| CT", "| ST-6", "| sgd"]


def test_figures_import_no_torch_and_no_model():
    import subprocess
    import sys
    code = ("import sys, loafing.figures; from loafing.cli import main\n"
            "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('loafing.models', 'loafing.methods')))\n"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_figures_command_imports_no_torch(results, tmp_path):
    import subprocess
    import sys
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('TORCH' if 'torch' in sys.modules else 'NO-TORCH'))\n"
            "from loafing.cli import main\n"
            f"sys.argv = ['loafing', 'figures', '--results', {str(results)!r}, '--out', {str(tmp_path)!r}, "
            "'--only', 'table1', '--only', 'fig4']\n"
            "main()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "NO-TORCH"
    assert (tmp_path / "table1.md").exists() and (tmp_path / "fig4.png").exists()


def test_hostile_csvs_give_a_reason_or_one_line_never_a_traceback(results, tmp_path):
    rows = read_table(results / "measure.csv", "measure")
    one = tmp_path / "one"  # what `measure --plan X` writes: one sub-network, no main network
    one.mkdir()
    rows[~rows["is_main"]].head(1).to_csv(one / "measure.csv", index=False)
    outcomes = make_figures(one, tmp_path / "out-one")
    assert all(o.skipped or all(p.exists() for p in o.paths) for o in outcomes)
    big = tmp_path / "big"  # an integer beyond int64
    big.mkdir()
    raw = pd.read_csv(results / "measure.csv", dtype=str, keep_default_na=False)
    raw.loc[0, "n_blocks"] = "99999999999999999999999"
    raw.to_csv(big / "measure.csv", index=False)
    with pytest.raises(LoafingError, match="column 'n_blocks' holds a value that is not an integer"):
        make_figures(big, tmp_path / "out-big", ["fig4"])
    escape = tmp_path / "deep" / "escape"  # a data set named so that a file name would climb out of --out
    escape.mkdir(parents=True)
    raw = pd.read_csv(results / "measure.csv", dtype=str, keep_default_na=False)
    raw["dataset"] = ["x/../../escaped" if i % 2 else "digits" for i in range(len(raw))]
    raw.to_csv(escape / "measure.csv", index=False)
    out = tmp_path / "deep" / "escape" / "out"
    outcomes = make_figures(escape, out, ["fig4", "table1"])
    written = [p for o in outcomes for p in o.paths]
    assert len(written) == 6 and all(p.parent == out for p in written)
    assert sorted(p.name for p in (tmp_path / "deep").rglob("*") if p.is_file() and p.parent != out) == \
        ["measure.csv"]


def test_figures_command_prints_paths_and_fails_with_exit_2(results, tmp_path, run_cli):
    code, out, _ = run_cli("figures", "--results", results, "--out", tmp_path, "--only", "table1")
    assert code == 0
    assert out.splitlines() == [f"  table1   {tmp_path / 'table1.md'}, {tmp_path / 'table1.png'}",
                                "drew 0 figures, 1 table"]
    (tmp_path / "nowhere").mkdir()  # an empty folder: nothing to draw, and nothing was expected
    code, out, _ = run_cli("figures", "--results", tmp_path / "nowhere", "--out", tmp_path, "--only", "fig6")
    assert code == 0 and out == "drew 0 figures, 0 tables; skipped 1: fig6 needs destruct rows\n"
    only_measure = tmp_path / "only-measure"
    only_measure.mkdir()
    (only_measure / "measure.csv").write_bytes((results / "measure.csv").read_bytes())
    code, out, _ = run_cli("figures", "--results", only_measure, "--out", tmp_path / "some", "--only", "fig4",
                           "--only", "fig6", "--only", "figr2", "--only", "figr6")
    assert code == 0
    assert out.splitlines()[1:] == ["drew 1 figure, 0 tables; skipped 3: fig6, figr6 need destruct rows; "
                                    "figr2 needs train_log rows"]
    code, out, err = run_cli("figures", "--results", only_measure, "--out", tmp_path / "none", "--only", "fig6")
    assert code == 2 and out == "" and err == (f"loafing: error: nothing to draw from {only_measure}: skipped 1: "
                                               "fig6 needs destruct rows\n")
    broken = tmp_path / "broken"
    broken.mkdir()
    read_table(results / "measure.csv", "measure").drop(columns=["is_main"]).to_csv(broken / "measure.csv", index=False)
    code, _, err = run_cli("figures", "--results", broken, "--out", tmp_path, "--only", "fig5")
    assert code == 2 and "is_main" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("figures", "--results", results, "--out", tmp_path, "--only", "fig99")
    assert code == 2 and "unknown figure 'fig99'; valid choices: fig1, inside, fig4" in err


def test_figure_legend_wraps_into_rows_when_its_labels_would_run_off_the_figure():
    fig, ax = plt.subplots(figsize=(6, 3), layout="constrained")
    labels = [f"inside resnet20-cifar ({name})" for name in ("CT", "ST", "ST (stochastic)", "ST++ [subnets=4]")]
    for i, label in enumerate(labels):
        ax.plot([0, 1], [i, i], label=label)
    try:
        figure_legend(fig, [ax])
        legend = fig.legends[0]
        renderer = fig.canvas.get_renderer()
        assert len(fig.legends) == 1 and [t.get_text() for t in legend.get_texts()] == labels
        assert 1 < legend._ncols < len(labels)
        assert legend.get_window_extent(renderer).width <= fig.bbox.width
    finally:
        plt.close(fig)


def test_plans_measured_again_by_the_inside_grid_count_once(tmp_path):
    # A study with an [inside] grid collects each host's sub-networks twice: from its own measurement (space
    # "ordered") and from the grid (space "inside"), with the same numbers. Tables must not weigh them twice.
    measure = measure_rows()
    again = measure[measure["run"].isin(["ct-s0", "st-s0"]) & measure["plan"].isin(["[1] [3]", "[1,2] [3]"])]
    once, twice = tmp_path / "once", tmp_path / "twice"
    once.mkdir(), twice.mkdir()
    measure.to_csv(once / "measure.csv", index=False)
    pd.concat([measure, again.assign(space="inside")]).to_csv(twice / "measure.csv", index=False)
    names = ["table1", "tabler3", "ablation"]
    make_figures(once, once / "out", names)
    make_figures(twice, twice / "out", names)
    for name in names:
        assert (twice / "out" / f"{name}.md").read_text() == (once / "out" / f"{name}.md").read_text()
    # The test is not empty: counted twice, the two plans would move CT's sub-network mean.
    ct = pd.concat([measure, again])
    ct = ct[(ct["run"] == "ct-s0") & ~ct["is_main"]]["top1"]
    assert ct.mean() != pytest.approx(ct.drop_duplicates().mean())


def test_figure_legend_keeps_an_explicit_column_count_and_needs_no_agg_canvas():
    from matplotlib.backends.backend_svg import FigureCanvasSVG

    fig, ax = plt.subplots(figsize=(3, 2))
    FigureCanvasSVG(fig)  # a canvas without get_renderer, as under MPLBACKEND=svg
    for i in range(4):
        ax.plot([0, 1], [i, i], label=f"a long label for the line number {i}")
    try:
        figure_legend(fig, [ax], ncols=4)
        assert len(fig.legends) == 1 and fig.legends[0]._ncols == 4
        fig.legends[0].remove()
        figure_legend(fig, [ax])
        assert len(fig.legends) == 1 and fig.legends[0]._ncols < 4
    finally:
        plt.close(fig)


# ---------------------------------------------------------------- results tables found by their columns


def test_every_table_is_told_by_its_columns_and_a_csv_of_other_columns_by_none():
    from loafing.schema import table_kind
    for name, table in TABLES.items():
        assert table_kind(list(table.dtypes())) == name  # every column the writers write
        assert table_kind(["run", *table.marks]) == name  # only the columns that mark it
        assert table_kind(list(table.marks)) is None  # no run: not a table of ours
    assert table_kind(list(destruct_rows().columns)) == "destruct"  # it holds measure's marks too
    assert table_kind(list(kl_rows().columns)) == "kl_trajectory"
    assert table_kind(["run", "model", "hello", "world"]) is None


def test_tables_are_read_by_their_columns_whatever_their_names(tmp_path):
    """CT's and ST's rows in ct.csv and st.csv draw what measure.csv draws; the sources are the files read."""
    measure = measure_rows()
    named, renamed = tmp_path / "named", tmp_path / "renamed"
    named.mkdir(), renamed.mkdir()
    measure.to_csv(named / "measure.csv", index=False)
    measure[measure["method"] == "ct"].to_csv(renamed / "ct.csv", index=False)
    measure[measure["method"] != "ct"].to_csv(renamed / "st.csv", index=False)
    destruct_rows().to_csv(renamed / "my-destruct.csv", index=False)
    (renamed / "notes.csv").write_text("when,what\nmonday,trained\n")
    (renamed / "README.md").write_text("not a CSV: not looked at\n")
    names = ["table1", "inside", "fig6"]
    make_figures(named, named / "out", names[:2])
    with pytest.warns(LoafingWarning, match=r"notes\.csv: not a results table.*skipped"):
        outcomes = make_figures(renamed, renamed / "out", names)
    assert [(o.name, o.skipped, o.sources) for o in outcomes] == [
        ("table1", None, ("ct.csv", "st.csv")), ("inside", None, ("ct.csv", "st.csv")),
        ("fig6", None, ("my-destruct.csv",))]
    for name in names[:2]:
        assert (renamed / "out" / f"{name}.md").read_text() == (named / "out" / f"{name}.md").read_text()


def test_a_copy_of_a_keyless_table_beside_it_is_refused_not_counted_twice(tmp_path, run_cli):
    """Two files holding one run's epochs (a copy of train_log.csv) would double Table r4's training time."""
    log = pd.read_csv(ROOT / "results" / "quick" / "train_log.csv")
    log.to_csv(tmp_path / "train_log.csv", index=False)
    log.to_csv(tmp_path / "train_log-copy.csv", index=False)
    code, _, err = run_cli("figures", "--results", tmp_path, "--out", tmp_path / "out", "--only", "tabler4")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "train_log-copy.csv and " in err and "train_log.csv both hold train_log rows of run 'ct-seed0'" in err
    assert not (tmp_path / "out").exists()
    # one run per file, as `--out ct-log.csv` and `--out st-log.csv` would write them: read together
    (tmp_path / "train_log-copy.csv").unlink()
    log[log["method"] == "ct"].to_csv(tmp_path / "train_log.csv", index=False)
    log[log["method"] != "ct"].to_csv(tmp_path / "st-log.csv", index=False)
    code, out, err = run_cli("figures", "--results", tmp_path, "--out", tmp_path / "out", "--only", "tabler4")
    assert code == 0, err
    table = (tmp_path / "out" / "tabler4.md").read_text()
    whole = log[(log["method"] == "ct") & log["trained_plan"].isna()]  # CT's runs of the whole network
    ct_seconds = whole.groupby("run")["seconds"].sum().mean()
    assert f"| CT | 2 | {ct_seconds:.2f} |" in table


def test_a_plan_in_two_files_counts_once_and_two_measurements_of_it_are_an_error(tmp_path):
    measure = measure_rows()
    (tmp_path / "a").mkdir()
    measure.to_csv(tmp_path / "a" / "all.csv", index=False)
    measure[measure["run"] == "ct-s0"].to_csv(tmp_path / "a" / "ct-again.csv", index=False)
    make_figures(tmp_path / "a", tmp_path / "out-a", ["table1"])
    measure.to_csv(tmp_path / "once.csv", index=False)
    make_figures(tmp_path, tmp_path / "out-once", ["table1"])
    assert (tmp_path / "out-a" / "table1.md").read_text() == (tmp_path / "out-once" / "table1.md").read_text()
    other = measure[measure["run"] == "ct-s0"].assign(top1=50.0)
    other.to_csv(tmp_path / "a" / "ct-again.csv", index=False)
    with pytest.raises(LoafingError, match="two different measurements"):
        make_figures(tmp_path / "a", tmp_path / "out-b", ["table1"])


def test_fig6_draws_a_foreign_checkpoint_and_a_skip_says_what_the_rows_lack(tmp_path):
    """The paper's own checkpoint, deleted and permuted (`loafing destruct --ckpt akamaster:resnet20 --out
    paper.csv`): Fig. 6 shows it; rows without any deleted layer give that as the reason, not a missing file."""
    rows = destruct_rows()
    paper = rows[rows["run"] == "ct-s0"].assign(method="external", method_label="foreign checkpoint",
                                                method_colour="#8c8c8c", method_role="conventional",
                                                method_order="", seed="", lam="", space_size="", sampling="")
    paper.to_csv(tmp_path / "paper.csv", index=False)
    [outcome] = make_figures(tmp_path, tmp_path / "out", ["fig6"])
    assert outcome.skipped is None and outcome.sources == ("paper.csv",)
    paper[paper["n"] == 0].to_csv(tmp_path / "paper.csv", index=False)
    [outcome] = make_figures(tmp_path, tmp_path / "out", ["fig6"])
    assert outcome.skipped == "only rows of intact networks (n = 0): no layer deleted or permuted"
    rows[rows["method"] == "stochastic-depth"].to_csv(tmp_path / "paper.csv", index=False)
    [outcome] = make_figures(tmp_path, tmp_path / "out", ["fig6"])
    assert outcome.skipped == "no rows of CT, ST, a foreign checkpoint (the rows are of stochastic-depth)"


def test_summary_line_counts_figures_and_tables_and_groups_skips_by_reason():
    from loafing.figures import FigureOutcome, summary_line
    outcomes = [FigureOutcome("fig4", [Path("fig4.png")]), FigureOutcome("table1", [Path("t.md"), Path("t.png")]),
                FigureOutcome("fig6", [], "needs destruct rows"), FigureOutcome("figr4", [], "needs destruct rows"),
                FigureOutcome("fig5", [], "needs at least three sizes", "a"),
                FigureOutcome("fig5", [], "needs at least three sizes", "b"),
                FigureOutcome("ablation", [], "no runs of ST", "a"),
                FigureOutcome("ablation", [Path("x.md")], None, "b")]
    assert summary_line(outcomes) == ("drew 1 figure, 2 tables; skipped 4: fig6, figr4 need destruct rows; fig5 "
                                      "needs at least three sizes; ablation (a): no runs of ST")
    assert summary_line(outcomes[:1]) == "drew 1 figure, 0 tables"


def test_fig5_with_two_space_sizes_is_skipped_and_fig1_labels_hold_one_pair_of_parentheses(tmp_path):
    measure = measure_rows(runs=RUNS[:4] + RUNS[7:9] + RUNS[13:])  # CT, ST, ST (raw), ST (stochastic); alone
    measure.to_csv(tmp_path / "measure.csv", index=False)
    fig5, fig1 = make_figures(tmp_path, tmp_path / "out", ["fig5", "fig1"])
    assert fig5.skipped.startswith("needs at least three sampling-space sizes")
    fig = plot_inside_vs_alone(read_table(tmp_path / "measure.csv", "measure"))
    try:
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
    finally:
        plt.close(fig)
    assert labels == ["trained alone", "inside toynet", "inside toynet, ST", "inside toynet, ST (raw)",
                      "inside toynet, ST (stochastic)"]
