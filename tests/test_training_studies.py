import copy
import random
from pathlib import Path

import pandas as pd
import pytest
import torch

from loafing.checkpoint import load_model
from loafing.destruct import delete_many, permute
from loafing.measure import measure_plans
from loafing.models import MODELS, create_model
from loafing.plans import ordered_space, parse_plan, restricted_ordered_space, sample_ordered_plan
from loafing.config import make_train_config
from loafing.eval_config import EvalConfig
from loafing.methods import st_loss_shared, st_loss_simple
from loafing.train import train


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", list(MODELS))
def test_shared_st_step_gives_the_gradients_of_the_simple_step(name):
    """In float64, so that only a difference in what is computed (not float32 rounding of large gradients) shows."""
    torch.manual_seed(0)
    base = create_model(name, 10, **({"width_mult": 0.5} if MODELS[name].width_mult else {})).train().double()
    small = base.layout.n_blocks <= 14  # the deep models: fewer plans on smaller images, the suite stays fast
    size, samples = (32, 6) if small else (max(16, MODELS[name].min_image_size), 1)
    x, y = torch.rand(4, 3, size, size, dtype=torch.float64), torch.randint(0, 10, (4,))
    plans = [sample_ordered_plan(base.layout, random.Random(s)) for s in range(samples)] + [base.layout.main_plan]
    # Plans that leave the main network mid-stage and rejoin it, or reorder it, exercise the other paths
    # (a model whose stages only shorten from the end, a DenseNet, has none).
    if not base.layout.prefix_only:
        plans += [delete_many(base.layout, 1, seed=0)[1].plan, permute(base.layout, 1, seed=0)[-1].plan]
    for plan in plans:
        results = {}
        for step in (st_loss_simple, st_loss_shared):
            model = copy.deepcopy(base)
            torch.manual_seed(1)  # same dropout masks in both
            result = step(model, x, y, plan, 2.0)
            result.loss.backward()
            results[step] = (result, grads(model), {k: v.clone() for k, v in model.state_dict().items()})
        (r1, g1, s1), (r2, g2, s2) = results[st_loss_simple], results[st_loss_shared]
        assert abs(r1.loss.item() - r2.loss.item()) < 1e-10 and abs(r1.kl.item() - r2.kl.item()) < 1e-10
        assert r1.kl.item() > 0 or plan == base.layout.main_plan
        assert g1.keys() == g2.keys()
        for key in g1:
            # Untrained deep networks on tiny batches have gradients up to 1e9: compare relative to each tensor's scale.
            assert (g2[key] - g1[key]).abs().max() <= 1e-10 * max(1.0, g1[key].abs().max().item()), f"{plan} {key}"
        for key in s1:  # running statistics: only the main network updates them, in both steps
            assert (s2[key] - s1[key]).abs().max() <= 1e-12 * max(1.0, s1[key].abs().max().item()), key


def test_recording_kl_and_test_accuracy_does_not_change_what_is_trained(tmp_path):
    """MobileNetV3's head has dropout: the evaluations' BN calibration must not shift the training's random stream."""
    weights = {}
    for name, kl_every in (("plain", 0), ("recorded", 1)):
        train(make_train_config(dict(model="mobilenet_v3_large", width_mult=0.5, method="st", epochs=2, lr=0.05,
                                     train_size=256, device="cpu", kl_every=kl_every, kl_plans=3, kl_probe_size=50,
                                     monitor_calib_size=64, channels_last=True, out=str(tmp_path / name))),
              progress=False)
        weights[name] = load_model(tmp_path / name / "checkpoint.pt").model.state_dict()
    assert all(torch.equal(weights["plain"][k], weights["recorded"][k]) for k in weights["plain"])
    assert (tmp_path / "recorded" / "kl_trajectory.csv").exists()


def test_restricted_space_is_seeded_and_contains_smallest_and_main():
    layout = create_model("mobilenet_v3_large", 10).layout
    full = ordered_space(layout)
    for size in (6, 48, 144):
        space = restricted_ordered_space(layout, size, seed=0)
        assert len(space) == size == len(set(space))
        assert space[0] == full[0] and space[-1] == layout.main_plan
        assert set(space) <= set(full)
        assert space == restricted_ordered_space(layout, size, seed=0)
    assert restricted_ordered_space(layout, 6, 0) != restricted_ordered_space(layout, 6, 1)


@pytest.fixture(scope="module")
def kl_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("kl")
    for method, extra in (("ct", {}), ("st", {"space_size": 6})):
        train(make_train_config(dict(model="resnet20-cifar", method=method, epochs=2, lr=0.1, device="cpu",
                                     train_size=330, kl_every=1, kl_plans=8, kl_probe_size=100, monitor_calib_size=100,
                                     out=str(root / method), **extra)), progress=False)
    return root


def test_kl_trajectory_and_cost_columns(kl_runs):
    kl = pd.read_csv(kl_runs / "ct" / "kl_trajectory.csv")
    assert kl.groupby("epoch").size().to_dict() == {1: 8, 2: 8}
    assert set(kl.groupby("epoch")["plan"].apply(frozenset)) == {frozenset(kl[kl.epoch == 1]["plan"])}
    assert (kl["kl"] >= 0).all() and {"run", "method", "lam", "seed", "depths"} <= set(kl.columns)
    log = pd.read_csv(kl_runs / "st" / "train_log.csv")
    assert (log["space_size"] == 6).all()
    assert ((log["examples_per_s"] * log["seconds"] - 320).abs() < 1e-6).all()  # 5 full batches of 64 (of 330)
    assert (log["peak_memory_mib"] > 100).all() and (log["memory_kind"] == "cpu_peak_rss").all()


def test_subnetwork_trained_alone_is_measured_on_its_plan(tmp_path, digits):
    plan = "[1] [4] [7,8]"
    train(make_train_config(dict(model="resnet20-cifar", method="ct", plan=plan, epochs=1, lr=0.1, device="cpu",
                                 monitor_calib_size=64, out=str(tmp_path / "alone"))), progress=False)
    loaded = load_model(tmp_path / "alone" / "checkpoint.pt")
    untouched = create_model("resnet20-cifar", 10)
    torch.manual_seed(0)
    fresh = create_model("resnet20-cifar", 10)
    # blocks outside the plan never trained: still equal to their seeded initialization
    assert torch.equal(loaded.model.block(9).conv1.weight, fresh.block(9).conv1.weight)
    assert not torch.equal(loaded.model.block(8).conv1.weight, fresh.block(8).conv1.weight)
    del untouched
    df = measure_plans(loaded, [parse_plan(plan)], digits, EvalConfig(calib_size=200, recalibrate=True, calib_seed=0,
                                                                      batch_size=256, device="cpu"), progress=False)
    row = df.iloc[0]
    assert row["trained_plan"] == plan == row["plan"] and row["is_main"] and row["kl"] == pytest.approx(0, abs=1e-6)
    log = pd.read_csv(tmp_path / "alone" / "train_log.csv")
    assert row["top1"] > 30 and log["trained_plan"].iloc[0] == plan


def test_resume_is_bit_identical(tmp_path, interrupted_training):
    from loafing.run_state import load_config

    def config(out):
        return make_train_config(dict(model="resnet20-cifar", method="st", epochs=3, lr=0.1, device="cpu",
                                      train_size=512, kl_every=2, kl_plans=3, kl_probe_size=50, monitor_calib_size=50,
                                      out=str(out)))

    train(config(tmp_path / "full"), progress=False)
    interrupted_training(config(tmp_path / "cut"), epoch=3)
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["epoch"] == 2
    train(load_config(tmp_path / "cut"), progress=False, resume=True)
    full = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    cut = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert cut["epoch"] == 3
    for key, value in full["model"].items():
        assert torch.equal(value, cut["model"][key]), key
    drop = ["seconds", "examples_per_s", "peak_memory_mib", "run"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "full" / "train_log.csv").drop(columns=drop),
                                  pd.read_csv(tmp_path / "cut" / "train_log.csv").drop(columns=drop))
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "full" / "kl_trajectory.csv").drop(columns="run"),
                                  pd.read_csv(tmp_path / "cut" / "kl_trajectory.csv").drop(columns="run"))


def test_atomic_writes_leave_the_previous_file_whole(tmp_path, monkeypatch):
    from loafing import io

    target = tmp_path / "checkpoint.pt"
    io.save_torch({"epoch": 1}, target)

    def broken_save(obj, file):  # a path, or the open temporary file save_torch hands it
        if isinstance(file, (str, Path)):
            file = open(file, "wb")
        file.write(b"half a checkp")
        file.flush()
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)  # save_torch imports torch when it saves
    with pytest.raises(OSError):
        io.save_torch({"epoch": 2}, target)
    monkeypatch.undo()
    assert torch.load(target)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    io.write_csv(pd.DataFrame({"a": [1]}), tmp_path / "x.csv")
    assert pd.read_csv(tmp_path / "x.csv")["a"].tolist() == [1]


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "st", "plan": "[1] [4] [7]"}, "--plan needs --method ct"),
    ({"method": "ct", "space_size": 6}, "--space-size needs --method st"),
    ({"method": "st", "space_size": 1}, "--space-size must be between 2 and 27"),
    ({"method": "st", "st_step": "fast"}, "unknown ST step 'fast'; valid choices: shared, simple"),
    ({"method": "ct", "plan": "[1] [5] [7]"}, "block 4 is not skippable"),
    ({"method": "ct", "kl_every": -1}, "--kl-every must be 0"),
    ({"method": "ct", "bn_momentum": 0.0}, r"--bn-momentum must be in \(0, 1\]"),
])
def test_bad_training_options(tmp_path, kwargs, message):
    from loafing.errors import LoafingError

    with pytest.raises(LoafingError, match=message.replace("[", r"\[")):
        train(make_train_config(dict(model="resnet20-cifar", epochs=1, device="cpu", out=str(tmp_path / "r"),
                                     **kwargs)), progress=False)
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_channels_last_step_gives_the_same_gradients():
    torch.manual_seed(0)
    base = create_model("mobilenet_v3_large", 10, 0.5).train()
    x, y = torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,))
    plan = sample_ordered_plan(base.layout, random.Random(3))
    results = {}
    for memory_format in (torch.contiguous_format, torch.channels_last):
        model = copy.deepcopy(base).to(memory_format=memory_format)
        torch.manual_seed(1)  # same dropout masks in both
        result = st_loss_shared(model, x.to(memory_format=memory_format), y, plan, 1.0)
        result.loss.backward()
        results[memory_format] = (result.loss.item(), grads(model))
    (loss, expected), (loss_nhwc, got) = results.values()
    assert loss_nhwc == pytest.approx(loss, rel=1e-5)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5)


def test_channels_last_and_bn_momentum_options_in_training(tmp_path):
    def run(name, **options):
        config = make_train_config(dict(model="resnet20-cifar", method="st", epochs=1, lr=0.1, device="cpu",
                                        train_size=512, monitor_calib_size=128, out=str(tmp_path / name), **options))
        log = train(config, progress=False)
        return log, load_model(tmp_path / name / "checkpoint.pt").model.state_dict()

    _, weights = run("plain")
    log_nhwc, _ = run("nhwc", channels_last=True)
    assert log_nhwc["loss"].notna().all() and log_nhwc["test_top1_recalibrated"].iloc[0] > 10
    # The BN momentum changes only the running statistics (1.0 keeps just the last batch's), not the weights.
    _, weights_m1 = run("momentum1", bn_momentum=1.0)
    assert torch.equal(weights_m1["net.conv1.weight"], weights["net.conv1.weight"])
    assert not torch.allclose(weights_m1["net.bn1.running_var"], weights["net.bn1.running_var"], rtol=1e-3)


@pytest.mark.slow
def test_st_keeps_kl_small_while_ct_grows_on_digits(tmp_path):
    """Fig. 7 on digits: median KL over plans at the last epoch, ST at most a third of CT."""
    medians = {}
    for method in ("ct", "st"):
        train(make_train_config(dict(model="mobilenet_v3_large", width_mult=0.5, method=method, epochs=30, seed=0,
                                     device="cpu", kl_every=5, out=str(tmp_path / method))), progress=False)
        kl = pd.read_csv(tmp_path / method / "kl_trajectory.csv")
        medians[method] = kl.groupby("epoch")["kl"].median()
    print(pd.DataFrame(medians))
    assert medians["st"].iloc[-1] <= medians["ct"].iloc[-1] / 3, medians
    assert (medians["st"] <= medians["ct"] / 3).all(), medians  # small through training, not only at the end
