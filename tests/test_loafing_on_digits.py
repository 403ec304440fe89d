"""The paper's central claim on the embedded data: ST removes the loafing that CT shows (slow: ~10 min)."""
import pytest
import torch

from loafing.checkpoint import load_model
from loafing.data import load_digits_splits
from loafing.measure import measure_plans
from loafing.plans import ordered_space
from loafing.train import TrainConfig, train


@pytest.mark.slow
def test_st_sub_networks_beat_ct_sub_networks_on_digits(tmp_path):
    data = load_digits_splits()
    results = {}
    for method in ("ct", "st"):
        config = TrainConfig(model="mobilenet_v3_large", width_mult=0.5, method=method, epochs=30, seed=0,
                             device="cpu", out=str(tmp_path / method))
        train(config, progress=False)
        loaded = load_model(tmp_path / method / "checkpoint.pt")
        df = measure_plans(loaded, ordered_space(loaded.model.layout), data, calib_size=2000, recalibrate=True,
                           seed=0, batch_size=256, device=torch.device("cpu"), progress=False)
        assert len(df) == 144
        results[method] = df
    ct, st = results["ct"], results["st"]
    assert ct.loc[ct["is_main"], "top1"].item() >= 95 and st.loc[st["is_main"], "top1"].item() >= 95
    assert st["top1"].mean() >= ct["top1"].mean() + 4
    assert st["top1"].std() <= ct["top1"].std() / 2
