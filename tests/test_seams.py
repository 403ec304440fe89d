"""The seams: one run schema for every table, model specs, the method registry, refused normalization layers."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from loafing.errors import LoafingError  # noqa: E402
from loafing.figures import table_cost, table_main_and_subnetworks  # noqa: E402
from loafing.methods import StepResult, TrainingMethod, TrainingStep, register_method, unregister_method  # noqa: E402
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
                               "--calib-size", 64, "--device", "cpu", "--out", tmp_path / method, "--quiet")
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
                                   options=("space_seed",), run_columns={"space_seed": "Int64"}))
    try:
        assert list(run_columns())[-1] == "space_seed"
        assert all("space_seed" in TABLES[t].dtypes() for t in TABLES)
        from loafing.config import TrainConfig
        from loafing.train import train
        train(TrainConfig(model="resnet20-cifar", method="tagged", space_seed=3, epochs=1, calib_size=32,
                          device="cpu", out=str(tmp_path / "run")), progress=False)
        assert read_table(tmp_path / "run" / "train_log.csv", "train_log")["space_seed"].tolist() == [3]
    finally:
        unregister_method("tagged")
    assert "space_seed" not in run_columns()


def test_method_options_belong_to_their_method(tmp_path):
    from loafing.config import TrainConfig
    from loafing.train import train
    with pytest.raises(LoafingError, match="--lam needs --method st"):
        train(TrainConfig(model="resnet20-cifar", method="ct", lam=5.0, out=str(tmp_path / "r")), progress=False)
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- swaps that cannot fail silently


class FusedBatchNormAct(nn.BatchNorm2d):
    """A BatchNorm2d subclass, as timm's norm-activation layers are."""

    def forward(self, x):
        return F.relu(super().forward(x))


@pytest.mark.parametrize("norm", [FusedBatchNormAct, nn.SyncBatchNorm, nn.BatchNorm1d,
                                  lambda c: nn.InstanceNorm2d(c, track_running_stats=True)])
def test_models_with_other_batch_statistics_layers_are_refused(norm):
    net = nn.ModuleDict({"stem": nn.Sequential(nn.Conv2d(3, 4, 1), norm(4)), "block": nn.Conv2d(4, 4, 1),
                         "head": nn.Sequential(nn.Flatten(), nn.LazyLinear(2))})
    with pytest.raises(LoafingError, match="layers are not supported: .* nn.BatchNorm2d only"):
        StagedModel(net, [net["block"]], (1,), (True,), stem=net["stem"], head=net["head"])


def test_per_example_normalization_is_accepted():
    net = nn.ModuleDict({"stem": nn.Sequential(nn.Conv2d(3, 4, 1), nn.GroupNorm(2, 4), nn.InstanceNorm2d(4)),
                         "block": nn.Conv2d(4, 4, 1), "head": nn.Sequential(nn.Flatten(), nn.LazyLinear(2))})
    StagedModel(net, [net["block"]], (1,), (True,), stem=net["stem"], head=net["head"])


@pytest.mark.parametrize("name", list(MODELS))
def test_every_registered_model_uses_only_supported_layers(name):
    from loafing.segments import SegmentedBatchNorm2d
    model = create_model(name, 10)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    assert norms and all(type(m) is SegmentedBatchNorm2d for m in norms)
