"""Studies as files: the TOML files of analyses/ against the Python presets they replaced, the format's errors,
the studies of the committed results, and the built-in studies of a non-editable install."""
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from loafing.config import make_train_config
from loafing.errors import LoafingError
from loafing.eval_config import EvalConfig
from loafing.reproduce import describe_plan, dry_run_text
from loafing.schema import read_table, write_table
from loafing.table_keys import one_row_per_key
from loafing.studies import builtin_study, load_study, studies_folder, study_names

ROOT = Path(__file__).resolve().parents[1]
# Every preset of the old loafing/analyses/*.py (and the old `lambda-ablation` command with its defaults), captured
# with dataclasses.asdict before those modules were deleted: what the study files must reproduce.
OLD = json.loads((ROOT / "tests" / "fixtures" / "old_presets.json").read_text())
RENAMED = {"calib_size": "monitor_calib_size"}  # TrainConfig settings renamed since


def old_settings(config: dict) -> dict:
    """The settings an old run set away from the old TrainConfig's defaults, under today's names."""
    return {RENAMED.get(k, k): v for k, v in config.items() if v != OLD["defaults"][k]}


def write(tmp_path: Path, text: str, name: str = "study.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_studies_folder_is_the_repositorys_analyses_folder_with_one_file_per_study():
    assert studies_folder() == ROOT / "analyses"
    assert set(study_names()) == {path.stem for path in (ROOT / "analyses").glob("*.toml")}
    assert set(OLD["presets"]) | {"densenet-digits", "densenet-cifar10", "fig1"} <= set(study_names())
    for name in study_names():
        assert builtin_study(name).name == name


@pytest.mark.parametrize("name", sorted(OLD["presets"]))
def test_every_study_file_reproduces_the_runs_and_settings_of_its_old_preset(name):
    old, study = OLD["presets"][name], builtin_study(name)
    assert (study.name, study.description) == (old["name"], old["description"])
    assert study.evaluation == EvalConfig(calib_size=old["calib_size"])  # the old orchestrator's other settings
    assert (study.max_combos, list(study.destruct_modes)) == (old["max_combos"], old["destruct_modes"])
    # The λ ablation's file has since said its training split's size, so that --dry-run can cost it
    old_images = 1347 if name == "lambda-ablation" else old["train_images"]
    assert (study.train_images, study.ct_hours) == (old_images, old["ct_hours"])
    assert study.inside is None and study.figures is None
    assert [(r.name, r.destruct, r.measure) for r in study.runs] == [(r["name"], r["destruct"], True)
                                                                    for r in old["runs"]]
    for run, old_run in zip(study.runs, old["runs"]):
        assert run.config == make_train_config(old_settings(old_run["config"])), run.name


def committed(study: str, table: str) -> pd.DataFrame:
    return pd.read_csv(ROOT / "results" / study / f"{table}.csv")


@pytest.mark.parametrize("name", ["densenet-digits", "densenet-cifar10"])
def test_the_densenet_study_files_describe_the_committed_grids(name):
    study = builtin_study(name)
    log = committed(name, "train_log")
    trained = log.groupby("run").agg(model=("model", "first"), width_mult=("width_mult", "first"),
                                     method=("method", "first"), seed=("seed", "first"),
                                     dataset=("dataset", "first"), epochs=("epoch", "max"))
    described = pd.DataFrame([{"run": r.name, "model": r.config.model, "width_mult": r.config.width_mult,
                               "method": r.config.method, "seed": r.config.seed, "dataset": r.config.dataset,
                               "epochs": r.config.epochs} for r in study.runs]).set_index("run")
    pd.testing.assert_frame_equal(trained.sort_index(), described.sort_index(), check_dtype=False)
    grid = committed(name, "measure")
    assert set(grid["space"]) == {"inside"} and set(grid["calib_size"]) == {study.evaluation.calib_size}
    assert set(grid["calib_seed"]) == {study.evaluation.calib_seed}
    assert study.inside.runs == tuple(described.index) and not study.inside.checkpoints
    assert set(grid["run"]) == set(study.inside.runs)
    assert not any(r.measure or r.destruct for r in study.runs) and study.figures == ("fig1", "inside")


def test_the_fig1_study_file_describes_the_committed_grid_on_foreign_checkpoints():
    study = builtin_study("fig1")
    grid = committed("fig1", "measure")
    assert study.runs == () and study.inside.runs == ()
    files = {Path(text.partition("=")[2]).stem: text.partition("=")[0] for text in study.inside.checkpoints}
    assert dict(grid.groupby("run")["model"].first()) == files
    assert set(grid["dataset"]) == {study.inside.dataset} and set(grid["space"]) == {"inside"}
    assert set(grid["calib_size"]) == {study.evaluation.calib_size}
    assert all((ROOT / text.partition("=")[2]).resolve().parent == (ROOT / ".." / "shared" / "checkpoints").resolve()
               for text in study.inside.checkpoints)


def test_a_study_file_anywhere_is_the_same_study_as_the_builtin_one(tmp_path):
    copy = tmp_path / "mine.toml"
    shutil.copy(ROOT / "analyses" / "quick.toml", copy)
    assert load_study(copy) == builtin_study("quick")
    assert dry_run_text(load_study(copy)) == dry_run_text(builtin_study("quick"))


def test_lists_expand_to_one_run_per_value_in_file_order_and_names_fill_in(tmp_path):
    study = load_study(write(tmp_path, """
        [defaults]
        model = "resnet20-cifar"
        seed = [0, 1]
        [[runs]]
        name = "ct-seed{seed}"
        [[runs]]
        name = "st-lam{lam:g}-{sampling}-seed{seed}"
        method = "st"
        lam = [0.5, 2]
        sampling = ["ordered", "raw"]
        [record.kl_every]
        ct-seed1 = 3
        [destruct]
        runs = ["ct-seed0"]
        modes = ["permute"]
        [measure]
        runs = ["ct-seed0", "ct-seed1"]
    """))
    assert [r.name for r in study.runs] == ["ct-seed0", "ct-seed1",
                                            "st-lam0.5-ordered-seed0", "st-lam0.5-ordered-seed1",
                                            "st-lam0.5-raw-seed0", "st-lam0.5-raw-seed1",
                                            "st-lam2-ordered-seed0", "st-lam2-ordered-seed1",
                                            "st-lam2-raw-seed0", "st-lam2-raw-seed1"]
    st = study.runs[6].config
    assert st == make_train_config({"model": "resnet20-cifar", "method": "st", "lam": 2.0, "sampling": "ordered",
                                    "seed": 0})
    assert [r.config.kl_every for r in study.runs[:2]] == [0, 3]
    assert [r.name for r in study.runs if r.destruct] == ["ct-seed0"] and study.destruct_modes == ("permute",)
    assert [r.name for r in study.runs if r.measure] == ["ct-seed0", "ct-seed1"]
    assert study.name == "study" and study.evaluation == EvalConfig()


@pytest.mark.parametrize("text, message", [
    ('nmae = "x"', "nmae: unknown key; valid keys: name, description,"),
    ('[defaults]\nepoch = 3', "defaults.epoch: unknown key; valid keys: model, width_mult,"),
    ('[[runs]]\nname = "a"\nepochs = "ten"', "runs[0].epochs: must be an integer, got 'ten'"),
    ('[[runs]]\nname = "a"\nepochs = 0', "runs[0].epochs: must be at least 1, got 0"),
    ('[[runs]]\nname = "a"\nmodel = "resnet7"', "runs[0].model: unknown model 'resnet7'; valid choices:"),
    ('[[runs]]\nname = "a"\nmethod = "ct"\nlam = 2.0', "runs[0]: --lam needs --method st"),
    ('[[runs]]\nname = "a"\nseed = [0, 1]', "runs[0].name: two runs of this entry are named 'a'"),
    ('[[runs]]\nname = "a{sed}"\nseed = [0, 1]', "runs[0].name: 'a{sed}' cannot be filled in: {sed} is not a setting"),
    ('[[runs]]\nname = "a"\nkl_every = 2', "runs[0].kl_every: is not a run setting here: set it per run in "
                                            "[record.kl_every]"),
    ('[[runs]]\nname = "a"\n[destruct]\nruns = ["b"]', "destruct.runs[0]: unknown run 'b'; valid choices: a"),
    ('[[runs]]\nname = "a"\n[destruct]\nmodes = ["shuffle"]', "valid choices: delete-one, delete-many, permute"),
    ('[[runs]]\nname = "a"\nmodel = "timm:vit_tiny_patch16_224"\nmodel_args = 3',
     "runs[0].model_args: must be a table"),
    ('[[runs]]\nname = "a"\nmodel = "timm:vit_tiny_patch16_224"\nmodel_args = { num_classes = 3 }',
     "runs[0].model_args.num_classes: --model-arg num_classes is not allowed"),
    ('[[runs]]\nname = "a"\n[influence]\nruns = ["b"]', "influence.runs[0]: unknown run 'b'; valid choices: a"),
    ('[[runs]]\nname = "a"\nplan = "[1] [4] [7]"\n[influence]\nruns = ["a"]',
     "influence.runs[0]: run 'a' trains a sub-network alone"),
    ('[[runs]]\nname = "a"\n[record.kl_every]\nb = 2', "record.kl_every.b: unknown key; valid keys: a"),
    ('[[runs]]\nname = "a"\n[evaluation]\ncalib_sise = 5', "evaluation.calib_sise: unknown key; valid keys: "
                                                           "calib_size, calib_seed, recalibrate,"),
    ('[[runs]]\nname = "a"\n[evaluation]\nrecalibrate = 1', "evaluation.recalibrate: must be true or false, got 1"),
    ('figures = ["fig99"]\n[[runs]]\nname = "a"', "figures[0]: unknown figure 'fig99'; valid choices: "),
    ('[inside]\ncheckpoints = [{path = "x.pt"}]', "inside: needs at least two networks"),
    ('description = "nothing to do"', "a study needs [[runs]] to train or an [inside] evaluation"),
    ('[[runs]\nname = "a"', "not valid TOML"),
])
def test_a_bad_study_file_is_a_one_line_error_naming_the_file_and_the_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(LoafingError) as error:
        load_study(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)
    assert "\n" not in str(error.value)


def test_unknown_builtin_study_and_missing_file_name_the_choices(tmp_path):
    with pytest.raises(LoafingError, match=r"unknown preset 'nope' \(a built-in study\); valid choices: .*quick"):
        builtin_study("nope")
    with pytest.raises(LoafingError, match="cannot read study file .*missing.toml"):
        load_study(tmp_path / "missing.toml")


def test_dry_run_costs_each_method_at_its_registered_relative_cost(monkeypatch):
    from loafing.methods import METHODS, get_method

    text = dry_run_text(builtin_study("paper-mbv3-cifar100-appendix"))
    assert "ST 1.4x" not in text and "st 1.4x" in text and "GPU-hours" in text
    monkeypatch.setitem(METHODS, "st", dataclasses.replace(get_method("st"), relative_cost=2.0))
    assert "st 2x" in dry_run_text(builtin_study("paper-mbv3-cifar100-appendix"))


def test_dry_run_costs_st_plus_plus_by_its_options():
    preset = builtin_study("st-plus-ablation-cifar10")
    passes = describe_plan(preset).set_index("run")["image_passes"].astype(float)
    per_ct = passes / passes["ct-seed0"]
    assert per_ct["st-seed0"] == pytest.approx(1.4, abs=0.01)
    assert per_ct["st-kl-norm-seed0"] == pytest.approx(per_ct["st-seed0"], abs=0.01)  # same passes as ST
    assert per_ct["st-k4-seed0"] == pytest.approx(1 + 4 * 0.4, abs=0.01)  # four sub-networks, each ST's extra
    # Sides uniform in [0.43, 1]: a mean area of 0.538 of the full input; the full-depth control doubles that.
    assert per_ct["st-small-inputs-seed0"] == pytest.approx(1 + 0.4 * 0.538, abs=0.01)
    assert per_ct["resolution-only-seed0"] == pytest.approx(1 + 0.8 * 0.538, abs=0.01)
    assert "st++ 1.4x at its defaults" in dry_run_text(preset)


@pytest.mark.parametrize("editable", [False, True], ids=["wheel", "editable"])
def test_builtin_studies_work_from_an_install_outside_the_checkout(tmp_path, editable):
    """`pip install .` (and -e) into a fresh venv, then `loafing reproduce --preset quick --dry-run` elsewhere."""
    source = tmp_path / "source"
    source.mkdir()
    for item in ("pyproject.toml", "setup.py", "README.md", "loafing", "analyses"):
        copy = shutil.copytree if (ROOT / item).is_dir() else shutil.copy
        copy(ROOT / item, source / item, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                            if (ROOT / item).is_dir() else {}))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    # torch and the other dependencies come from the venv running the tests (a path, not a site dir: its
    # editable loafing is not seen).
    outer = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "torch").is_dir())
    (site / "outer.pth").write_text(outer + "\n")
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    *(["-e"] if editable else []), str(source)], check=True, cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([str(venv / "bin" / "loafing"), "reproduce", "--preset", "quick", "--dry-run"],
                          cwd=elsewhere, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == dry_run_text(builtin_study("quick")).strip()
    # The studies it found: beside the installed package (the wheel's copy), or the checkout's (editable).
    package = subprocess.run([str(python), "-c", "import loafing; print(loafing.__file__)"], cwd=elsewhere,
                             capture_output=True, text=True, check=True).stdout.strip()
    assert Path(package).parent == (source / "loafing" if editable else site / "loafing")
    if not editable:
        shipped = sorted(p.name for p in (site / "loafing" / "analyses").glob("*.toml"))
        assert shipped == sorted(f"{n}.toml" for n in study_names())
        assert not (site / "analyses").exists()  # no top-level folder or package besides loafing
        assert next(site.glob("loafing-*.dist-info/top_level.txt")).read_text().split() == ["loafing"]


def test_a_study_builds_library_networks_with_their_builder_arguments(tmp_path):
    path = write(tmp_path, """
        [defaults]
        model = "timm:vit_tiny_patch16_224"
        model_args = { img_size = 32, patch_size = 4, depth = 2 }
        [[runs]]
        name = "vit-{method}"
        method = ["ct", "st"]
        [[runs]]
        name = "deep"
        model_args = [{ img_size = 32, patch_size = 4, depth = 3, embed_dim = 48 }]
        [influence]
        runs = ["vit-st"]
        """)
    study = load_study(path)
    assert [r.name for r in study.runs] == ["vit-ct", "vit-st", "deep"]
    assert study.runs[0].config.model_args == {"img_size": 32, "patch_size": 4, "depth": 2}
    assert study.runs[2].config.model_args["depth"] == 3
    assert [r.name for r in study.runs if r.influence] == ["vit-st"]
    from loafing.models import create_model

    assert create_model("timm:vit_tiny_patch16_224", 10, model_args=study.runs[2].config.model_args).layout.stage_sizes \
        == (3,)


def test_collected_measure_table_keeps_one_row_per_run_and_plan(tmp_path):
    from loafing.study_results import collect_results

    def rows(run: str, plans: list[str], space: str, top1: float) -> pd.DataFrame:
        return pd.DataFrame({"run": run, "model": "toynet", "width_mult": 1.0, "method": "ct", "seed": 0,
                             "dataset": "digits", "trained_plan": "", "variant": "", "granularity": "block",
                             "plan": plans, "depths": "", "n_blocks": 0, "is_main": [p == "[1,2] [3,4]" for p in plans],
                             "architecture": "", "top1": top1, "top5": 99.0, "loss": 0.5, "n_examples": 100,
                             "kl": 0.0, "recalibrated": True, "calib_size": 50, "calib_seed": 0,
                             "calib_augmented": True, "space": space})

    run, grid = tmp_path / "runs" / "ct", tmp_path / "inside"
    run.mkdir(parents=True), grid.mkdir()
    own = rows("ct", ["[1] [3]", "[1,2] [3]", "[1] [3,4]", "[1,2] [3,4]"], "ordered", 60.0)
    write_table(own, run / "measure.csv", "measure")
    # The grid measures the host's ResNet-8-like sub-network and main network again, and a network alone.
    write_table(pd.concat([rows("ct", ["[1] [3]", "[1,2] [3,4]"], "inside", 60.0),
                           rows("alone", ["[1] [3]"], "inside", 80.0)]), grid / "measure.csv", "measure")
    collect_results([run, grid], tmp_path / "results")
    collected = read_table(tmp_path / "results" / "measure.csv", "measure")
    assert sorted(zip(collected["run"], collected["plan"])) == sorted(
        [("ct", p) for p in own["plan"]] + [("alone", "[1] [3]")])
    assert set(collected.loc[collected["run"] == "ct", "space"]) == {"ordered"}  # the run's own rows are kept


def test_one_row_per_key_drops_repeats_keeps_other_runs_and_refuses_two_networks_under_one_name():
    def row(top1: float, **ids) -> dict:
        return {"run": "model_best", "model": "resnet20-cifar", "width_mult": 1.0, "method": "external",
                "seed": None, "dataset": "cifar10", "trained_plan": "", "granularity": "block", "plan": "[1] [4] [7]",
                "top1": top1, "n_examples": 10_000, "recalibrated": True, "calib_size": 2000, "calib_seed": 0,
                "calib_augmented": True, **ids}

    # A repeat within one test image (a GPU's nondeterminism) is one measurement; other models and seeds are kept.
    table = pd.DataFrame([row(80.0), row(80.01), row(70.0, model="resnet32-cifar"), row(75.0, seed=0)])
    assert one_row_per_key(table, "measure")["top1"].tolist() == [80.0, 70.0, 75.0]
    assert len(one_row_per_key(table.drop(columns="plan"), "measure")) == 4  # no full key: nothing to drop
    with pytest.raises(LoafingError, match=r"run 'model_best' holds two different measurements of plan "
                                           r"\[1\] \[4\] \[7\] \(80.00%, 88.00%\)"):
        one_row_per_key(pd.DataFrame([row(80.0), row(88.0)]), "measure")
    with pytest.raises(LoafingError, match="two different measurements"):  # the same top-1, calibrated otherwise
        one_row_per_key(pd.DataFrame([row(80.0), row(80.0, calib_augmented=False)]), "measure")
