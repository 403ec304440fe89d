"""Block influence: the table against an independent computation, a block made an identity, destruct's drops, the
CLI and the figure."""
import copy
import dataclasses
import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import Subset

from loafing.checkpoint import LoadedModel, load_model
from loafing.config import TrainConfig
from loafing.data import load_digits_splits, seeded_subset
from loafing.eval_config import EvalConfig
from loafing.figures import FIGURES, plot_influence
from loafing.influence import block_influence
from loafing.schema import read_table
from loafing.train import train

CALIB = 64
EVAL = EvalConfig(calib_size=CALIB, calib_seed=0, batch_size=CALIB, device="cpu")  # one calibration batch


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """resnet20-cifar trained one epoch on 128 digits."""
    out = tmp_path_factory.mktemp("run") / "ct"
    train(TrainConfig(model="resnet20-cifar", dataset="digits", method="ct", epochs=1, train_size=128, seed=0,
                      device="cpu", monitor_calib_size=32, out=str(out)), progress=False)
    return out / "checkpoint.pt"


@pytest.fixture(scope="module")
def small_digits():
    data = load_digits_splits()
    return dataclasses.replace(data, test=Subset(data.test, range(96)))


@pytest.fixture(scope="module")
def recalibrated(checkpoint, small_digits):
    """The influence table of the checkpoint, BN recalibrated."""
    return block_influence(load_model(checkpoint), small_digits, EVAL, progress=False)


def hooked_cosines(model, data, recalibrate: bool) -> dict[int, float]:
    """Mean per-example cosine of each block's input and output, read by forward hooks on the blocks of the plain
    forward, after BN statistics re-estimated by PyTorch itself from one train-mode batch of the calibration images."""
    model = copy.deepcopy(model)
    if recalibrate:
        calib = torch.stack([x for x, _ in seeded_subset(data.train_plain, CALIB, 0)])
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None  # a cumulative average: after one batch, that batch's mean and unbiased variance
        model.train()
        with torch.no_grad():
            model(calib)
    model.eval()
    seen: dict[int, list] = {}
    hooks = [model.block(b).register_forward_hook(
        lambda module, args, out, b=b: seen.setdefault(b, []).append((args[0].numpy(), out.numpy())))
        for b in model.layout.main_plan.sequence()]
    with torch.no_grad():
        model(torch.stack([x for x, _ in data.test]))
    for hook in hooks:
        hook.remove()
    out = {}
    for b, [(x, y)] in seen.items():
        if x.shape != y.shape:
            out[b] = math.nan
            continue
        x, y = x.reshape(len(x), -1).astype(np.float64), y.reshape(len(y), -1).astype(np.float64)
        out[b] = float(np.mean((x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))))
    return out


@pytest.mark.parametrize("recalibrate", [True, False])
def test_influence_equals_hooked_cosines(checkpoint, small_digits, recalibrated, recalibrate):
    loaded = load_model(checkpoint)
    expected = hooked_cosines(loaded.model, small_digits, recalibrate)
    df = recalibrated if recalibrate else block_influence(loaded, small_digits,
                                                          dataclasses.replace(EVAL, recalibrate=False), progress=False)
    df = df.set_index("block")
    assert list(df.index) == list(loaded.model.layout.main_plan.sequence())
    for b, cosine in expected.items():
        if math.isnan(cosine):  # a block that changes the shape (the first of stages 2 and 3)
            assert math.isnan(df.loc[b, "cosine"]) and math.isnan(df.loc[b, "influence"])
        else:
            assert df.loc[b, "cosine"] == pytest.approx(cosine, abs=1e-5)
            assert df.loc[b, "influence"] == pytest.approx(1 - cosine, abs=1e-5)
    assert df["stage"].tolist() == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert df["deletable"].tolist() == [b in loaded.model.layout.skippable for b in df.index]
    assert df["recalibrated"].all() == recalibrate and (df["n_examples"] == 96).all()
    assert df["top1_drop"].isna().tolist() == (~df["deletable"]).tolist()


def test_a_block_with_a_zeroed_branch_has_no_influence_and_no_drop(checkpoint, small_digits):
    loaded = load_model(checkpoint)
    zeroed = 5
    bn = loaded.model.block(zeroed).bn2  # the last layer of its residual branch: the branch now outputs 0
    with torch.no_grad():
        bn.weight.zero_()
        bn.bias.zero_()
    df = block_influence(loaded, small_digits, EVAL, progress=False).set_index("block")
    assert abs(df.loc[zeroed, "influence"]) < 1e-6
    assert abs(df.loc[zeroed, "top1_drop"]) < 1e-9
    others = df.drop(index=zeroed)["influence"].dropna()
    assert (others > 1e-3).all()  # the other blocks do change their input


def test_a_given_delete_one_table_is_used_instead_of_running_the_deletions(checkpoint, small_digits, recalibrated,
                                                                          monkeypatch):
    import loafing.influence
    from loafing.destruct import destruct

    table = destruct(load_model(checkpoint), small_digits, "delete-one", EVAL, progress=False)
    table["drop"] = table["drop"] + 100.0  # marks where the drops come from

    def refuse(*args, **kwargs):
        raise AssertionError("block_influence ran the deletions although it was given them")

    monkeypatch.setattr(loafing.influence, "destruct", refuse)
    df = block_influence(load_model(checkpoint), small_digits, EVAL, progress=False, delete_one=table)
    deletable = df["deletable"]
    assert df.loc[deletable, "top1_drop"].to_numpy() == pytest.approx(
        recalibrated.loc[deletable, "top1_drop"].to_numpy() + 100.0, abs=1e-9)
    assert df["influence"].to_numpy() == pytest.approx(recalibrated["influence"].to_numpy(), nan_ok=True)
    with pytest.raises(ValueError, match="does not delete each deletable block"):  # another network's, or a part
        block_influence(load_model(checkpoint), small_digits, EVAL, progress=False, delete_one=table.iloc[:-1])


def test_a_layernorm_vit_measures_its_tokens(small_digits):
    pytest.importorskip("timm")
    from loafing.models import create_model

    args = {"img_size": 32, "patch_size": 8, "depth": 3, "embed_dim": 32, "num_heads": 2}
    torch.manual_seed(0)
    model = create_model("timm:vit_tiny_patch16_224", 10, model_args=args).eval()
    loaded = LoadedModel(model, {"model": "timm:vit_tiny_patch16_224", "model_args": args, "num_classes": 10,
                                 "method": "ct", "run": "vit"}, "loafing")
    expected = hooked_cosines(model, small_digits, recalibrate=False)
    df = block_influence(loaded, small_digits, EVAL, progress=False).set_index("block")
    assert not df["recalibrated"].any() and (df["calib_size"] == 0).all()  # nothing to recalibrate in a ViT
    assert df["deletable"].all() and df["top1_drop"].notna().all()
    for b, cosine in expected.items():
        assert df.loc[b, "cosine"] == pytest.approx(cosine, abs=1e-5)


def test_cli_writes_the_table_with_destructs_drops_and_figures_draw_it(run_cli, checkpoint, tmp_path, monkeypatch):
    import loafing.measure

    real = loafing.measure.load_dataset

    def first_96_test_images(*args, **kwargs):  # both commands evaluate on them (seconds, not a minute)
        data = real(*args, **kwargs)
        return dataclasses.replace(data, test=Subset(data.test, range(96)))

    monkeypatch.setattr(loafing.measure, "load_dataset", first_96_test_images)
    results, settings = tmp_path / "results", ("--calib-size", CALIB, "--batch-size", CALIB, "--device", "cpu")
    code, out, err = run_cli("influence", "--ckpt", checkpoint, "--out", results / "influence.csv", "--quiet",
                             *settings)
    assert code == 0, err
    assert "influence.csv" in out
    code, _, err = run_cli("destruct", "--ckpt", checkpoint, "--mode", "delete-one", "--out",
                           tmp_path / "destruct.csv", "--quiet", *settings)
    assert code == 0, err
    table = read_table(results / "influence.csv", "influence")
    deleted = read_table(tmp_path / "destruct.csv", "destruct")
    deleted = deleted[deleted["n"] == 1]
    drops = table[table["deletable"]].set_index("block")["top1_drop"]
    assert drops.to_dict() == pytest.approx(dict(zip(deleted["layers"].astype(int), deleted["drop"])))
    assert table.loc[~table["deletable"], "top1_drop"].isna().all()
    assert (table["run"] == deleted["run"].iloc[0]).all() and (table["method"] == "ct").all()

    code, out, err = run_cli("figures", "--results", results, "--out", tmp_path / "figures", "--only", "influence")
    assert code == 0, err
    assert (tmp_path / "figures" / "influence.png").stat().st_size > 0


@pytest.mark.parametrize("args, message", [
    (("--calib-size", "0"), "--calib-size"),
    (("--device", "tpu"), "device"),
    (("--ckpt", "missing.pt"), "missing.pt"),
])
def test_cli_bad_input_is_one_line(run_cli, checkpoint, tmp_path, args, message):
    if "--ckpt" not in args:
        args = ("--ckpt", checkpoint, *args)
    code, _, err = run_cli("influence", *args, "--out", tmp_path / "influence.csv")
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "influence.csv").exists()


def test_figure_draws_one_line_and_one_set_of_bars_per_run(recalibrated):
    ct = recalibrated
    st = ct.assign(run="st-run", method="st", method_label="ST", method_colour="#dd8452",
                   method_role="stimulative", influence=ct["influence"] / 2, top1_drop=ct["top1_drop"] / 2)
    both = pd.concat([ct, st])
    spec = FIGURES["influence"]
    assert spec.table == "influence" and spec.function is plot_influence
    fig = plot_influence(both)
    try:
        top, bottom = fig.axes[:2]
        measured = int(ct["influence"].notna().sum())
        assert len(top.patches) == 2 * measured
        heights = sorted(p.get_height() for p in top.patches)
        assert heights == pytest.approx(sorted([*ct["influence"].dropna(), *st["influence"].dropna()]))
        runs = [line for line in bottom.lines if line.get_marker() == "o"]
        assert len(runs) == 2
        for line, table in zip(runs, (ct, st)):
            assert np.array_equal(line.get_ydata(), table["top1_drop"].to_numpy(), equal_nan=True)
        assert {t.get_text() for t in fig.legends[0].get_texts()} == {"CT", "ST"}
    finally:
        plt.close(fig)


def test_the_options_are_the_evaluation_settings_but_the_space():
    import click

    from loafing.cli import cli
    from loafing.eval_config import EvalConfig, eval_option_specs

    params = {p.name: p for p in cli.get_command(click.Context(cli), "influence").params}
    for spec in eval_option_specs():
        if spec.name == "space":
            assert "space" not in params  # the plans are the main network and its delete-one deletions
        else:
            assert params[spec.name].default == getattr(EvalConfig(), spec.name)


def test_a_sub_network_trained_alone_is_refused(checkpoint, small_digits):
    from loafing.errors import LoafingError

    loaded = load_model(checkpoint)
    loaded.config["plan"] = "[1] [4] [7]"
    with pytest.raises(LoafingError, match="not a sub-network trained alone"):
        block_influence(loaded, small_digits, EVAL, progress=False)
