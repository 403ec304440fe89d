import dataclasses
from pathlib import Path

import pandas as pd
import pytest
import torch

from loafing.checkpoint import load_model
from loafing.data import load_dataset, make_loader, seeded_subset
from loafing.evaluate import evaluate_plans_one_by_one
from loafing.figures import FIGURES, make_figures
from loafing.influence import block_influence
from loafing.inside import load_family
from loafing.models import create_model
from loafing.errors import LoafingError
from loafing.measure import measure_plans
from loafing.plans import ordered_space, parse_plan
from loafing.reproduce import Preset, RunSpec, dry_run_text, reproduce
from loafing.studies import InsideSpec, builtin_study, study_names
from loafing.train import check_config
from loafing.config import flat_settings, make_train_config
from loafing.eval_config import EvalConfig

ROOT = Path(__file__).resolve().parents[1]
BASE = dict(model="resnet20-cifar", epochs=1, lr=0.1, kl_probe_size=64, monitor_calib_size=64, kl_plans=4)


def tiny_preset(calib_size: int = 128) -> Preset:
    runs = (RunSpec("ct", make_train_config({**BASE, "method": "ct", "kl_every": 1}), destruct=True, influence=True),
            RunSpec("st", make_train_config({**BASE, "method": "st", "kl_every": 1}), destruct=True),
            RunSpec("alone", make_train_config({**BASE, "method": "ct", "plan": "[1] [4] [7]"})))
    return Preset("tiny", "test", runs, evaluation=EvalConfig(calib_size=calib_size), max_combos=5, train_images=1347)


def mtimes(folder):
    return {p.relative_to(folder): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    summary, figures = reproduce(tiny_preset(), out, device="cpu", jobs=2, progress=False)
    return out, summary, figures


def test_reproduce_trains_measures_destructs_and_plots(reproduced):
    out, summary, figures = reproduced
    assert summary["trained"].all() and list(summary["run"]) == ["ct", "st", "alone"]
    measure = pd.read_csv(out / "results" / "measure.csv")
    assert measure.groupby("run").size().to_dict() == {"ct": 27, "st": 27, "alone": 1}
    assert measure.loc[measure["run"] == "alone", "trained_plan"].tolist() == ["[1] [4] [7]"]
    destruct = pd.read_csv(out / "results" / "destruct.csv")
    assert set(destruct["run"]) == {"ct", "st"} and set(destruct["mode"]) == {"delete-one", "delete-many", "permute"}
    kl = pd.read_csv(out / "results" / "kl_trajectory.csv")
    assert kl.groupby("run").size().to_dict() == {"ct": 4, "st": 4}
    log = pd.read_csv(out / "results" / "train_log.csv")
    assert sorted(log["run"]) == ["alone", "ct", "st"]
    made = {f.name for f in figures if not f.skipped}
    assert {"fig4", "fig6", "fig7", "table1", "tabler4"} <= made
    assert all((out / "figures" / p.name).stat().st_size > 0 for f in figures for p in f.paths)

    # The collected numbers are the checkpoint's own: recompute the CT run with the reference evaluator.
    loaded = load_model(out / "runs" / "ct" / "checkpoint.pt")
    data = load_dataset("digits")
    plans = ordered_space(loaded.model.layout)[:3]
    calib = make_loader(seeded_subset(data.train_plain, 128, 0), 256)
    expected = evaluate_plans_one_by_one(loaded.model, plans, make_loader(data.test, 256), calib,
                                         torch.device("cpu"), progress=False)
    got = measure[measure["run"] == "ct"].set_index("plan").loc[[str(p) for p in plans], "top1"]
    assert got.tolist() == pytest.approx(expected["top1"].tolist(), abs=1e-9)

    # [influence]: the study's table is `loafing influence`'s own on that checkpoint, for the runs that ask for it.
    influence = pd.read_csv(out / "results" / "influence.csv")
    assert set(influence["run"]) == {"ct"} and "influence" in made
    direct = block_influence(loaded, data, EvalConfig(calib_size=128), progress=False)
    assert influence["block"].tolist() == direct["block"].tolist()
    assert influence["influence"].to_numpy() == pytest.approx(direct["influence"].to_numpy(), abs=1e-9, nan_ok=True)
    assert influence["top1_drop"].to_numpy() == pytest.approx(direct["top1_drop"].to_numpy(), abs=1e-9, nan_ok=True)


def test_reproduce_reuses_completed_work_and_finishes_interrupted_work(reproduced):
    out, _, _ = reproduced
    runs = out / "runs"
    before = mtimes(runs)
    first = pd.read_csv(runs / "st" / "measure.csv")
    (runs / "st" / "measure.csv").unlink()  # as if interrupted before st was measured
    summary, _ = reproduce(tiny_preset(), out, device="cpu", jobs=1, progress=False)
    assert not summary["trained"].any()
    after = mtimes(runs)
    changed = {p for p in before if before[p] != after.get(p)}
    assert changed == {runs.joinpath("st", "measure.csv").relative_to(runs)}
    pd.testing.assert_frame_equal(pd.read_csv(runs / "st" / "measure.csv"), first)

    # Other evaluation settings: the CSVs are recomputed, the checkpoint reused (shown on the one-plan run: quick,
    # and the other runs keep the settings the next test reuses them with).
    alone = dataclasses.replace(tiny_preset(calib_size=64), runs=tiny_preset().runs[2:])
    summary, _ = reproduce(alone, out, device="cpu", jobs=1, progress=False)
    assert not summary["trained"].any()
    assert set(pd.read_csv(out / "results" / "measure.csv")["calib_size"]) == {64}
    assert pd.read_csv(runs / "alone" / "measure.csv")["calib_size"].tolist() == [64]
    assert mtimes(runs)[Path("alone", "checkpoint.pt")] == before[Path("alone", "checkpoint.pt")]


def test_a_moved_study_folder_is_the_same_study(reproduced, tmp_path):
    import shutil

    out, _, _ = reproduced
    moved = tmp_path / "elsewhere"
    shutil.copytree(out, moved)  # as a folder committed on one machine and checked out on another
    summary, _ = reproduce(tiny_preset(), moved, device="cpu", jobs=1, progress=False)
    assert not summary["trained"].any()
    assert mtimes(moved / "runs")[Path("ct", "checkpoint.pt")] == mtimes(out / "runs")[Path("ct", "checkpoint.pt")]


def test_an_evaluation_view_a_runs_network_has_not_is_refused_before_anything_trains(tmp_path):
    study = Preset("bad-view", "test", (RunSpec("ct", make_train_config({**BASE, "method": "ct"})),),
                   evaluation=EvalConfig(granularity="unit"))
    with pytest.raises(LoafingError, match="unit") as caught:
        reproduce(study, tmp_path, device="cpu", jobs=1, progress=False)
    assert "\n" not in str(caught.value) and not (tmp_path / "runs").exists()


def test_every_preset_is_valid_for_its_model():
    for name in study_names():
        preset = builtin_study(name)
        assert len({r.name for r in preset.runs}) == len(preset.runs), name
        methods = [(r.config.method, r.config.seed) for r in preset.runs if not r.config.plan]
        if preset.inside is None:  # the studies of CT vs ST (the others measure networks inside others)
            assert ("ct", 0) in methods and ("st", 0) in methods, name
        for run in preset.runs:
            if run.config.plan:
                model = create_model(run.config.model, 10, run.config.width_mult)
                model.check_plan(parse_plan(run.config.plan))
                assert parse_plan(run.config.plan) != model.layout.main_plan
            check_config(dataclasses.replace(run.config, out="x"))
    quick = builtin_study("quick")
    # Sub-networks trained alone, in the paper's Table r1 layer indices.
    assert {r.config.plan for r in quick.runs if r.config.plan} == {
        "[1] [3] [6] [10] [12]", "[1] [3,4] [6,7] [10] [12,13]", "[1,2] [3,4] [6,7,8] [10,11] [12,13]"}
    assert {r.config.seed for r in quick.runs if r.config.method == "ct" and not r.config.plan} == {0, 1}
    settings = [flat_settings(r.config) for r in quick.runs]
    assert {s.get("space_size") for s in settings} == {None, 6, 48}
    assert len({s["lam"] for s in settings if s["method"] == "st"}) >= 3


def test_cli_dry_run_and_bad_preset(run_cli, tmp_path):
    code, out, _ = run_cli("reproduce", "--preset", "paper-mbv3-cifar100", "--dry-run")
    assert code == 0
    preset = builtin_study("paper-mbv3-cifar100")
    assert all(r.name in out for r in preset.runs) and "GPU-hours" in out
    code, out, err = run_cli("reproduce", "--preset", "nope", "--out", tmp_path / "x")
    assert code == 2 and "unknown preset 'nope'" in err and "quick" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
    code, _, err = run_cli("reproduce", "--preset", "paper-mbv3-cifar10",
                           "--data-dir", tmp_path / "missing", "--out", tmp_path / "y")
    assert code == 2 and len(err.strip().splitlines()) == 1 and not (tmp_path / "y").exists()
    code, _, err = run_cli("figures", "--results", tmp_path / "none", "--out", tmp_path / "f")
    assert code == 2 and "does not exist" in err


def test_a_study_file_and_its_preset_name_print_the_same_plan(run_cli):
    code, by_file, _ = run_cli("reproduce", "--study", ROOT / "analyses" / "quick.toml", "--dry-run")
    assert code == 0
    code, by_name, _ = run_cli("reproduce", "--preset", "quick", "--dry-run")
    assert code == 0 and by_file == by_name == dry_run_text(builtin_study("quick")) + "\n"


def foreign_checkpoint(path: Path, model: str) -> Path:
    """An akamaster-format file of a freshly initialized network (what Fig. 1's study reads)."""
    net = create_model(model, 10).net
    torch.save({"best_prec1": 0.0, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    return path


def test_an_inside_study_measures_foreign_checkpoints_inside_each_other_and_reuses_its_grid(tmp_path, digits):
    small = foreign_checkpoint(tmp_path / "r20.th", "resnet20-cifar")
    big = foreign_checkpoint(tmp_path / "r32.th", "resnet32-cifar")
    evaluation = EvalConfig(calib_size=64, batch_size=128)
    inside = InsideSpec(checkpoints=(f"resnet20-cifar={small}", f"resnet32-cifar={big}"), dataset="digits")
    study = Preset("tiny-fig1", "test", (), evaluation=evaluation, inside=inside, figures=("fig1", "inside"))
    out = tmp_path / "out"
    summary, figures = reproduce(study, out, device="cpu", jobs=1, progress=False)
    assert summary.empty and {f.name for f in figures if not f.skipped} == {"fig1", "inside"}
    grid = pd.read_csv(out / "results" / "measure.csv")
    assert set(grid["space"]) == {"inside"} and set(grid["calib_size"]) == {64}
    assert sorted(zip(grid["run"], grid["plan"])) == [
        ("r20", "[1,2,3] [4,5,6] [7,8,9]"), ("r32", "[1,2,3,4,5] [6,7,8,9,10] [11,12,13,14,15]"),
        ("r32", "[1,2,3] [6,7,8] [11,12,13]")]
    # Each number is the checkpoint's own, measured directly with the study's settings.
    for run, path, model in (("r20", small, "resnet20-cifar"), ("r32", big, "resnet32-cifar")):
        loaded = load_model(path, model)
        plans = [parse_plan(p) for p in grid.loc[grid["run"] == run, "plan"]]
        direct = measure_plans(loaded, plans, digits, dataclasses.replace(evaluation, device="cpu"), progress=False)
        assert grid.loc[grid["run"] == run, "top1"].tolist() == pytest.approx(direct["top1"].tolist(), abs=1e-9)
    stamp = (out / "inside" / "measure.csv").stat().st_mtime_ns
    reproduce(study, out, device="cpu", jobs=1, progress=False)
    assert (out / "inside" / "measure.csv").stat().st_mtime_ns == stamp  # fresh: not measured again

    missing = dataclasses.replace(study, inside=InsideSpec(checkpoints=(str(big), str(tmp_path / "gone.th"))))
    with pytest.raises(LoafingError, match="gone.th does not exist"):
        reproduce(missing, tmp_path / "never", device="cpu", jobs=1, progress=False)
    assert not (tmp_path / "never").exists()


APPENDIX_FIGURES = {"fig3", "figr4", "figr5", "figr6", "figr7"}  # they need the appendix's methods
OWN_TABLE_FIGURES = {"influence", "gap"}  # tables the quick study does not write (loafing influence, an [inside] family)


def test_every_figure_regenerates_from_the_committed_results(tmp_path):
    outcomes = make_figures(ROOT / "results" / "quick", tmp_path / "quick")
    assert {o.name for o in outcomes} == set(FIGURES)
    assert {o.name for o in outcomes if o.skipped} == APPENDIX_FIGURES | OWN_TABLE_FIGURES
    appendix = make_figures(ROOT / "results" / "appendix-quick", tmp_path / "appendix", sorted(APPENDIX_FIGURES))
    assert [o.name for o in appendix if o.skipped] == []
    assert all(p.stat().st_size > 0 for o in outcomes + appendix for p in o.paths)


@pytest.mark.slow
def test_quick_preset_shows_the_papers_qualitative_results(tmp_path):
    reproduce(builtin_study("quick"), tmp_path, device="cpu", progress=False)
    results = tmp_path / "results"
    measure = pd.read_csv(results / "measure.csv")
    full = measure[measure["trained_plan"].isna() & measure["space_size"].isna() & (measure["lam"] == 1.0)]
    subs = full[~full["is_main"]].groupby("method")["top1"]
    assert subs.mean()["st"] >= subs.mean()["ct"] + 4 and subs.std()["st"] <= subs.std()["ct"] / 2
    destruct = pd.read_csv(results / "destruct.csv")
    drops = destruct[destruct["n"] > 0].groupby(["mode", "n", "method"])["drop"].median().unstack()
    deletions = drops.loc[["delete-one", "delete-many"]]
    assert (deletions["st"] <= deletions["ct"]).all() and (deletions["st"] < deletions["ct"]).mean() > 0.8, drops
    kl = pd.read_csv(results / "kl_trajectory.csv")
    last = kl[~kl["is_main"] & (kl["epoch"] == kl["epoch"].max())].groupby("method")["kl"].median()
    assert last["st"] <= last["ct"] / 3
    alone = measure[measure["trained_plan"].notna()].set_index("plan")["top1"]
    inside_ct = full[full["method"] == "ct"].groupby("plan")["top1"].mean()
    assert (alone > inside_ct[alone.index]).all()  # loafing: worse inside than alone


def test_a_family_with_two_networks_of_one_name_is_refused(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    small = foreign_checkpoint(tmp_path / "a" / "model_best.th", "resnet20-cifar")
    big = foreign_checkpoint(tmp_path / "b" / "model_best.th", "resnet32-cifar")
    with pytest.raises(LoafingError, match="two checkpoints are both named 'model_best' .*a/model_best.th.*b/"):
        load_family([f"resnet20-cifar={small}", f"resnet32-cifar={big}"], "digits")
