"""The paper's central claims on the embedded data: ST removes the loafing CT shows (slow: ~10 min)."""
import pytest

from loafing.checkpoint import load_model
from loafing.data import load_digits_splits
from loafing.destruct import destruct
from loafing.eval_config import EvalConfig
from loafing.measure import measure_plans
from loafing.plans import ordered_space
from loafing.train import TrainConfig, train

EVALUATION = EvalConfig(calib_size=2000, recalibrate=True, calib_seed=0, batch_size=256, device="cpu")


@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    for method in ("ct", "st"):
        train(TrainConfig(model="mobilenet_v3_large", width_mult=0.5, method=method, epochs=30, seed=0,
                          device="cpu", out=str(root / method)), progress=False)
    return {m: load_model(root / m / "checkpoint.pt") for m in ("ct", "st")}


@pytest.mark.slow
def test_st_sub_networks_beat_ct_sub_networks_on_digits(digits_runs):
    data = load_digits_splits()
    results = {}
    for method, loaded in digits_runs.items():
        df = measure_plans(loaded, ordered_space(loaded.model.layout), data, EVALUATION, progress=False)
        assert len(df) == 144
        results[method] = df
    ct, st = results["ct"], results["st"]
    assert ct.loc[ct["is_main"], "top1"].item() >= 95 and st.loc[st["is_main"], "top1"].item() >= 95
    assert st["top1"].mean() >= ct["top1"].mean() + 4
    assert st["top1"].std() <= ct["top1"].std() / 2


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["delete-one", "delete-many"])
def test_st_is_more_robust_to_layer_deletion_on_digits(digits_runs, mode):
    data = load_digits_splits()
    medians = {}
    for method, loaded in digits_runs.items():
        df = destruct(loaded, data, mode, EVALUATION, max_combos=200, progress=False)
        medians[method] = df[df["n"] > 0].groupby("n")["drop"].median()
    assert (medians["st"] < medians["ct"]).all(), medians
