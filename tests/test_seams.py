"""The seams: one run schema for every table, model specs, the method registry, refused normalization layers."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import dataclasses
from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from loafing.config import OptionSpec, make_train_config, train_option_specs  # noqa: E402
from loafing.errors import LoafingError  # noqa: E402
from loafing.figures import table_cost, table_main_and_subnetworks  # noqa: E402
from loafing.methods import (METHODS, StepResult, TrainingMethod, TrainingStep, register_method,  # noqa: E402
                             unregister_method)
from loafing.models import MODELS, ModelSpec, StagedModel, create_model, register_model, unregister_model  # noqa: E402
from loafing.schema import TABLES, read_table, run_columns, write_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- one schema


COMMITTED = [(folder.name, table) for folder in sorted((ROOT / "results").iterdir()) if folder.is_dir()
             for table in TABLES if (folder / TABLES[table].file).exists()]


@pytest.mark.parametrize("folder, table", COMMITTED)
def test_committed_tables_round_trip_byte_for_byte(folder, table, tmp_path):
    source = ROOT / "results" / folder / TABLES[table].file
    df = read_table(source, table)
    assert list(df.columns) == list(TABLES[table].dtypes())
    assert {c: str(t) for c, t in df.dtypes.items()} == TABLES[table].dtypes()
    write_table(df, tmp_path / "again.csv", table)
    assert (tmp_path / "again.csv").read_bytes() == source.read_bytes()


def test_values_keep_their_type_on_a_round_trip(tmp_path):
    rows = pd.DataFrame({
        "run": ["a", "NA"], "model": ["m", "m"], "width_mult": [0.5, 1.0], "method": ["ct", "st"],
        "lam": [1.0, None], "seed": [0, None], "dataset": ["digits", "digits"], "trained_plan": ["", "[1] [3]"],
        "space_size": [None, 6], "mode": ["delete-one", "delete-many"], "n": [1, 2], "layers": ["2", "4,8"],
        "plan": ["[1,2] [3]", "[1] [3]"], "depths": ["2-1", "1-1"], "n_blocks": [3, 2], "is_main": [True, False],
        "top1": [90.0, 1 / 3], "drop": [0.0, 2.5], "top5": [99.0, 98.0], "loss": [0.1, 0.2], "n_examples": [450, 450],
        "kl": [0.0, 0.01], "recalibrated": [True, True], "calib_size": [500, 500], "calib_seed": [0, 0],
        "sampled": [False, True]})
    write_table(rows, tmp_path / "d.csv", "destruct")
    back = read_table(tmp_path / "d.csv", "destruct")
    assert back["layers"].tolist() == ["2", "4,8"] and back["run"].tolist() == ["a", "NA"]
    assert back["trained_plan"].tolist() == ["", "[1] [3]"]
    assert back["space_size"].isna().tolist() == [True, False] and back["space_size"].iloc[1] == 6
    assert str(back["seed"].dtype) == "Int64" and back["seed"].iloc[0] == 0 and pd.isna(back["seed"].iloc[1])
    assert back["top1"].iloc[1] == 1 / 3  # floats are written exactly
    assert back["is_main"].tolist() == [True, False]


@pytest.mark.parametrize("content, message", [
    ("run,model\nx,y\n", "missing column 'width_mult'"),
    ("\x00\x01\x02garbage\xff", "not a readable CSV"),
])
def test_unreadable_tables_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "measure.csv"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(LoafingError, match=message) as error:
        read_table(path, "measure")
    assert "\n" not in str(error.value)


def test_text_in_a_numeric_column_is_named(tmp_path):
    df = read_table(ROOT / "results" / "quick" / "measure.csv", "measure").head(3)
    df = df.astype({"top1": str})
    df.loc[1, "top1"] = "high"
    df.to_csv(tmp_path / "measure.csv", index=False)
    with pytest.raises(LoafingError, match="column 'top1' holds a value that is not a number"):
        read_table(tmp_path / "measure.csv", "measure")


# ---------------------------------------------------------------- a model and a method are one registration each


def tiny_model(num_classes: int, width_mult: float) -> StagedModel:
    """Two stages of two blocks; the first block of stage 2 doubles the width."""
    def residual(c):
        return nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
    net = nn.ModuleDict({"stem": nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
                         "blocks": nn.Sequential(Residual(residual(8)), Residual(residual(8)),
                                                 nn.Conv2d(8, 16, 3, stride=2, padding=1), Residual(residual(16))),
                         "head": nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))})
    return StagedModel(net, list(net["blocks"]), (2, 2), (True, True, False, True), stem=net["stem"],
                       head=net["head"])


class Residual(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def smoothed_ce(model, config, rng) -> TrainingStep:
    def loss(x, y):
        ce = F.cross_entropy(model(x), y, label_smoothing=0.1)
        return StepResult(ce, ce, torch.zeros(()))
    return TrainingStep(loss)


@pytest.fixture
def registered():
    register_model(ModelSpec("tiny-test", tiny_model, "a throw-away model", recipe="cifar",
                             classifier_key="head.2.weight"))
    register_method(TrainingMethod("smooth", "LS", "#777777", "CE with label smoothing 0.1", smoothed_ce))
    yield
    unregister_model("tiny-test")
    unregister_method("smooth")


def test_a_registered_model_and_method_train_measure_and_tabulate(registered, run_cli, tmp_path):
    assert "tiny-test" in MODELS and MODELS["tiny-test"].layout().stage_sizes == (2, 2)
    for method in ("ct", "smooth"):
        code, _, err = run_cli("train", "--model", "tiny-test", "--method", method, "--epochs", 1, "--lr", 0.1,
                               "--monitor-calib-size", 64, "--device", "cpu", "--out", tmp_path / method, "--quiet")
        assert code == 0, err
        code, out, err = run_cli("measure", "--ckpt", tmp_path / method / "checkpoint.pt", "--calib-size", 64,
                                 "--out", tmp_path / f"{method}.csv", "--quiet")
        assert code == 0, err
    measure = pd.concat([read_table(tmp_path / f"{m}.csv", "measure") for m in ("ct", "smooth")])
    assert measure.groupby("method").size().to_dict() == {"ct": 4, "smooth": 4}  # 2 x 2 ordered plans
    assert measure["space"].eq("ordered").all()
    log = pd.concat([read_table(tmp_path / m / "train_log.csv", "train_log") for m in ("ct", "smooth")])
    assert table_main_and_subnetworks(measure)["scheme"].tolist() == ["CT", "LS"]
    assert table_cost(log)["scheme"].tolist() == ["CT", "LS"]
    code, out, _ = run_cli("methods")
    assert "smooth (LS): CE with label smoothing 0.1" in out
    code, out, _ = run_cli("models")
    assert "tiny-test: a throw-away model" in out and "stages 2-2" in out


def test_a_method_adds_a_run_column_to_every_table(tmp_path):
    register_method(TrainingMethod("tagged", "TG", "#123456", "CT with a run column",
                                   lambda model, config, rng: TrainingStep(
                                       lambda x, y: StepResult(*(F.cross_entropy(model(x), y),) * 2,
                                                               torch.zeros(()))),
                                   options=(OptionSpec("space_seed", int, 0, "a seed ST declares alike"),),
                                   run_columns={"space_seed": "Int64"}))
    try:
        assert list(run_columns())[-1] == "space_seed"
        assert all("space_seed" in TABLES[t].dtypes() for t in TABLES)
        from loafing.train import train
        train(make_train_config({"model": "resnet20-cifar", "method": "tagged", "space_seed": 3, "epochs": 1,
                                 "monitor_calib_size": 32, "device": "cpu", "out": str(tmp_path / "run")}),
              progress=False)
        assert read_table(tmp_path / "run" / "train_log.csv", "train_log")["space_seed"].tolist() == [3]
    finally:
        unregister_method("tagged")
    assert "space_seed" not in run_columns()


def test_method_options_belong_to_their_method(tmp_path):
    from loafing.train import train
    with pytest.raises(LoafingError, match="--lam needs --method st"):
        train(make_train_config({"model": "resnet20-cifar", "method": "ct", "lam": 5.0, "out": str(tmp_path / "r")}),
              progress=False)
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- a method is one file


@pytest.fixture
def throwaway():
    """tests/throwaway_method.py: a whole method in one file, registered by importing it, removed afterwards."""
    import importlib
    import sys

    assert "smoothed" not in METHODS
    yield importlib.import_module("throwaway_method")
    unregister_method("smoothed")
    sys.modules.pop("throwaway_method", None)


def test_a_method_in_one_file_trains_measures_and_draws(throwaway, tmp_path):
    from loafing.checkpoint import load_model
    from loafing.eval_config import EvalConfig
    from loafing.figures import make_figures
    from loafing.figures.style import method_styles
    from loafing.measure import evaluation_data, measure_plans
    from loafing.plans import get_space
    from loafing.train import train, check_config

    assert "--smoothing" in [o.flag for o in train_option_specs()]
    results, parts = tmp_path / "results", {"measure": [], "train_log": []}
    for method, options in (("ct", {}), ("smoothed", {"smoothing": 0.2})):
        config = make_train_config({"model": "resnet20-cifar", "method": method, "epochs": 1, "lr": 0.1,
                                    "train_size": 128, "monitor_calib_size": 32, "device": "cpu",
                                    "out": str(tmp_path / method), **options})
        train(config, progress=False)
        loaded = load_model(tmp_path / method / "checkpoint.pt")
        plans = get_space("uniform", loaded.model.layout)
        parts["measure"].append(measure_plans(loaded, plans, evaluation_data(loaded), EvalConfig(
            calib_size=32, batch_size=256, device="cpu"), space="uniform", progress=False))
        parts["train_log"].append(read_table(tmp_path / method / "train_log.csv", "train_log"))
    assert loaded.config["method_options"] == {"smoothing": 0.2}
    results.mkdir()
    for table, frames in parts.items():
        write_table(pd.concat(frames, ignore_index=True), results / TABLES[table].file, table)

    measure = read_table(results / "measure.csv", "measure")
    mine, ct = measure[measure["method"] == "smoothed"], measure[measure["method"] == "ct"]
    assert len(mine) == len(ct) == 3
    assert set(mine["method_label"]) == {"Label smoothing"} and set(mine["method_colour"]) == {"#17becf"}
    assert set(mine["method_order"]) == {list(METHODS).index("smoothed")} and set(mine["method_role"]) == {""}
    assert mine["smoothing"].tolist() == [0.2] * 3 and ct["smoothing"].isna().all()
    assert ct["lam"].isna().all() and set(ct["method_label"]) == {"CT"}
    assert read_table(results / "train_log.csv", "train_log")["smoothing"].tolist()[-1] == 0.2
    assert method_styles(measure)["smoothed"].colour == "#17becf"
    outcomes = make_figures(results, tmp_path / "figures", ["table1", "figr2"])
    assert [o.skipped for o in outcomes] == [None, None]
    table1 = [path for o in outcomes for path in o.paths if o.name == "table1" and path.suffix in (".md", ".csv")]
    assert table1 and all("Label smoothing" in path.read_text() for path in table1)

    # What it refuses, before any work: its option under another method, --plan, its own check.
    for settings, message in (({"method": "ct", "smoothing": 0.3}, "--smoothing needs --method smoothed"),
                              ({"method": "smoothed", "plan": "[1] [4] [7]"}, "--plan needs --method ct"),
                              ({"method": "smoothed", "amp": "bf16"}, "runs in float32 only")):
        with pytest.raises(LoafingError, match=message.replace("[", r"\[")):
            check_config(make_train_config({"model": "resnet20-cifar", "out": "x", **settings}))
    unregister_method("smoothed")
    assert "smoothing" not in run_columns() and "--smoothing" not in [o.flag for o in train_option_specs()]
    # Its rows still read where it is not registered, its column typed by its cells.
    assert read_table(results / "measure.csv", "measure").query("method == 'smoothed'")["smoothing"].tolist() == \
        [0.2] * 3


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_runs_variant_names_each_variant_option_off_its_default(name):
    from loafing.config import make_train_config
    from loafing.schema import run_identifiers

    method = METHODS[name]
    at_defaults = dataclasses.asdict(make_train_config({"method": name}))
    assert run_identifiers(at_defaults, "digits")["variant"] == ""
    specs = {o.name: o for o in method.options}
    for option in method.variant_options:
        spec = specs[option]
        if spec.kind is str:
            other = next(c for c in spec.choices() if c != spec.default)
        else:
            other = spec.default / 2 if spec.kind is float else spec.default + 1
        settings = {"method": name, option: other}
        if name == "st++" and option == "ce_logits":
            settings["kl_logits"] = "normalized"  # CE on normalized logits needs them for the KL too
        if name == "st++" and option == "sub_depth":
            settings.update(sub_resize_min=0.5, sampling="ordered")
        if name == "st++" and option == "amplitude":
            settings["kl_logits"] = "normalized"
        config = dataclasses.asdict(make_train_config(settings))
        variant = run_identifiers(config, "digits")["variant"]
        expected = f"{option}={other:g}" if isinstance(other, float) else f"{option}={other}"
        assert expected in variant.split(", "), (option, variant)


def test_options_declared_by_two_methods_must_agree():
    def build(model, config, rng):
        return TrainingStep(lambda x, y: None)

    def method(name, **kwargs):
        return TrainingMethod(name, name.upper(), "#000000", "a method that cannot register", build, **kwargs)

    with pytest.raises(ValueError, match="option 'lam' is int .* but 'st' declares it float"):
        register_method(method("other-lam", options=(OptionSpec("lam", int, 1, "x"),)))
    with pytest.raises(ValueError, match="'epochs' is a TrainConfig setting"):
        register_method(method("epochs", options=(OptionSpec("epochs", int, 1, "x"),)))
    with pytest.raises(ValueError, match="run column 'tag' is not one of its options"):
        register_method(method("tagless", run_columns={"tag": "str"}))
    with pytest.raises(ValueError, match="variant option 'tag' is not one of its options"):
        register_method(method("variantless", variant_options=("tag",)))
    assert not {"other-lam", "epochs", "tagless", "variantless"} & set(METHODS)
    assert [o.flag for o in train_option_specs()].count("--lam") == 1


def test_configuration_and_schema_import_no_method_and_no_torch():
    import subprocess
    import sys
    code = ("import sys, loafing.config, loafing.schema, loafing.legacy; "
            "assert not {m for m in sys.modules if m == 'torch' or m.startswith('loafing.methods')}")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    train_py = (ROOT / "loafing" / "train.py").read_text()
    assert not any(name in train_py for name in ('"st"', "'st'", '"ct"', "'ct'"))


# Rows copied from the committed results as they were written before rows carried their method's style
# (quick: CT, ST, ST-6, ST at λ 3, a sub-network trained alone; appendix-quick: stochastic depth, ST raw; fig1: a
# foreign checkpoint).
OLD_MEASURE = """\
run,model,width_mult,method,lam,seed,dataset,trained_plan,space_size,sampling,plan,depths,n_blocks,is_main,top1,top5,loss,n_examples,kl,recalibrated,calib_size,calib_seed,space
ct-seed0,mobilenet_v3_large,0.5,ct,1.0,0,digits,,,,[1] [3] [6] [10] [12],1-1-1-1-1,5,False,40.888888888888886,94.88888888888889,1.925817396375868,450,1.8293547905815972,True,500,0,ordered
st-seed0,mobilenet_v3_large,0.5,st,1.0,0,digits,,,ordered,[1] [3] [6] [10] [12],1-1-1-1-1,5,False,94.22222222222223,99.55555555555556,0.1865740203857422,450,0.11087670644124349,True,500,0,ordered
st-space6-seed0,mobilenet_v3_large,0.5,st,1.0,0,digits,,6,ordered,[1] [3] [6] [10] [12],1-1-1-1-1,5,False,96.0,99.55555555555556,0.12565094417995876,450,0.07563102298312717,True,500,0,ordered
st-lam3-seed0,mobilenet_v3_large,0.5,st,3.0,0,digits,,,ordered,[1] [3] [6] [10] [12],1-1-1-1-1,5,False,92.44444444444444,99.11111111111111,0.3522919040256076,450,0.09257218254937066,True,500,0,ordered
alone1-seed0,mobilenet_v3_large,0.5,ct,1.0,0,digits,[1] [3] [6] [10] [12],,,[1] [3] [6] [10] [12],1-1-1-1-1,5,True,98.22222222222223,100.0,0.05184250937567817,450,0.0,True,500,0,plans
stochastic-depth-seed0,mobilenet_v3_large,0.5,stochastic-depth,1.0,0,digits,,,,[1] [3] [6] [10] [12],1-1-1-1-1,5,False,52.888888888888886,89.11111111111111,1.818955078125,450,1.6423442247178819,True,500,0,ordered
st-raw-seed0,mobilenet_v3_large,0.5,st,1.0,0,digits,,,raw,[1] [3] [6] [10] [12],1-1-1-1-1,5,False,79.33333333333333,98.44444444444444,0.6247766452365452,450,0.44155180189344617,True,500,0,ordered
resnet20-12fca82f,resnet20-cifar,1.0,external,,,imagefolder,,,,"[1,2,3] [4,5,6] [7,8,9]",3-3-3,9,True,79.26,98.41,0.9334686711311341,10000,0.0,True,2000,0,inside
"""


def test_a_table_in_the_old_layout_reads_with_its_methods_styles(tmp_path):
    (tmp_path / "old.csv").write_text(OLD_MEASURE)
    df = read_table(tmp_path / "old.csv", "measure")
    assert list(df.columns[:len(TABLES["measure"].dtypes())]) == list(TABLES["measure"].dtypes())
    by_run = df.set_index("run")
    expected = {"ct-seed0": ("CT", "#4c72b0", "conventional", 0), "st-seed0": ("ST", "#c44e52", "stimulative", 1),
                "alone1-seed0": ("CT", "#4c72b0", "conventional", 0),
                "stochastic-depth-seed0": ("Stochastic depth", "#55a868", "", 2),
                "resnet20-12fca82f": ("foreign checkpoint", "#8c8c8c", "conventional", None)}
    for run, (label, colour, role, order) in expected.items():
        row = by_run.loc[run]
        assert (row["method_label"], row["method_colour"], row["method_role"]) == (label, colour, role), run
        assert (pd.isna(row["method_order"]) if order is None else row["method_order"] == order), run
    # Only ST's rows keep lam, space_size and sampling: CT rows carried lam=1.0 without reading it.
    assert by_run.loc[["ct-seed0", "alone1-seed0", "stochastic-depth-seed0", "resnet20-12fca82f"], "lam"].isna().all()
    assert by_run.loc[["st-seed0", "st-space6-seed0", "st-lam3-seed0"], "lam"].tolist() == [1.0, 1.0, 3.0]
    assert by_run.loc["st-space6-seed0", "space_size"] == 6 and pd.isna(by_run.loc["st-seed0", "space_size"])
    assert by_run.loc[["st-raw-seed0", "ct-seed0"], "sampling"].tolist() == ["raw", ""]
    assert by_run.loc["alone1-seed0", "trained_plan"] == "[1] [3] [6] [10] [12]"
    write_table(df, tmp_path / "new.csv", "measure")  # once migrated, a round trip changes nothing
    assert read_table(tmp_path / "new.csv", "measure").equals(df)


def test_an_old_flat_configuration_still_loads_and_is_the_same_run(tmp_path):
    import json

    from loafing.config import config_from_dict
    from loafing.reproduce import has_config

    saved = {"model": "resnet20-cifar", "method": "st", "lam": 3.0, "space_size": None, "space_seed": 0,
             "st_step": "shared", "sampling": "ordered", "sd_survival": 0.9, "sd_mode": "batch", "kd_temperature": 3.0,
             "calib_size": 64, "plan": None, "epochs": 1, "out": str(tmp_path)}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    wanted = make_train_config({"model": "resnet20-cifar", "method": "st", "lam": 3, "monitor_calib_size": 64,
                                "epochs": 1, "out": str(tmp_path)})
    assert wanted.method_options == {"lam": 3.0, "space_size": None, "space_seed": 0, "st_step": "shared",
                                     "sampling": "ordered"}
    assert has_config(tmp_path, wanted)
    assert not has_config(tmp_path, make_train_config({"model": "resnet20-cifar", "method": "st", "lam": 1.0,
                                                       "monitor_calib_size": 64, "epochs": 1, "out": str(tmp_path)}))
    with pytest.raises(LoafingError, match="--sd-mode needs --method stochastic-depth"):
        config_from_dict({**saved, "sd_mode": "row"})


# ---------------------------------------------------------------- normalization layers kept as they are


class FusedBatchNormAct(nn.BatchNorm2d):
    """A BatchNorm2d subclass, as timm's norm-activation layers are."""

    def forward(self, x):
        return F.relu(super().forward(x))


def one_norm_net(norm):
    return nn.ModuleDict({"stem": nn.Sequential(nn.Conv2d(3, 4, 1), norm(4)), "block": nn.Conv2d(4, 4, 1),
                          "head": nn.Sequential(nn.Flatten(), nn.LazyLinear(2))})


@pytest.mark.parametrize("norm", [FusedBatchNormAct, nn.SyncBatchNorm, nn.BatchNorm1d])
def test_batch_norm_subclasses_are_kept_and_made_segment_aware(norm):
    from loafing.segments import is_segment_aware
    net = one_norm_net(norm)
    model = StagedModel(net, [net["block"]], (1,), (True,), stem=net["stem"], head=net["head"])
    layer = model.net["stem"][1]
    assert type(layer) is norm and is_segment_aware(layer)


def test_instance_norm_with_running_statistics_is_refused():
    net = one_norm_net(lambda c: nn.InstanceNorm2d(c, track_running_stats=True))
    with pytest.raises(LoafingError, match="layers with running statistics are not supported"):
        StagedModel(net, [net["block"]], (1,), (True,), stem=net["stem"], head=net["head"])


def test_per_example_normalization_is_accepted():
    net = nn.ModuleDict({"stem": nn.Sequential(nn.Conv2d(3, 4, 1), nn.GroupNorm(2, 4), nn.InstanceNorm2d(4)),
                         "block": nn.Conv2d(4, 4, 1), "head": nn.Sequential(nn.Flatten(), nn.LazyLinear(2))})
    StagedModel(net, [net["block"]], (1,), (True,), stem=net["stem"], head=net["head"])


@pytest.mark.parametrize("name", list(MODELS))
def test_every_registered_model_uses_only_supported_layers(name):
    from loafing.segments import is_segment_aware
    model = create_model(name, 10)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    assert norms and all(type(m) is nn.BatchNorm2d and is_segment_aware(m) for m in norms)
