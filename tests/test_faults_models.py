"""The timm / torchvision model zoo from the user's side: every listed family trains with ST and is measured, a
network whose library stages hold blocks that cannot be skipped after their first keeps those blocks in every
sub-network, and builder arguments that build a network that cannot run are one line before any work."""
from __future__ import annotations

import re

import pandas as pd
import pytest
import timm
import torch

from loafing.models.families import FAMILIES

TINY = ["--epochs", "1", "--train-size", "64", "--batch-size", "16", "--monitor-calib-size", "16", "--device", "cpu",
        "--quiet"]


def _blocks(plan: str) -> list[int]:
    return [int(b) for b in re.findall(r"\d+", plan)]


def _fixed_blocks(name: str) -> list[int]:
    """The blocks of a timm EfficientNet / MobileNet network that have no skip connection, numbered over its body as
    plans number them, read from the library's own modules."""
    net = timm.create_model(name.partition(":")[2], num_classes=10)
    return [i for i, b in enumerate((b for stage in net.blocks for b in stage), start=1)
            if not getattr(b, "has_skip", False)]


def _one_line_error(code: int, out: str, err: str) -> str:
    assert code == 2, (code, out, err)
    assert "Traceback" not in out + err
    assert err.startswith("loafing: error: ") and err.count("\n") == 1, err
    return err


def test_a_network_with_unskippable_blocks_inside_its_stages_trains_with_st_and_measures(run_cli, tmp_path):
    """mobilenetv4_conv_small: timm's first two stages each hold two convolutions that cannot be skipped (blocks 1-4);
    ST's sampled sub-networks, the KL trajectory's plans and `measure`'s keep every block that cannot be skipped."""
    name, run = "timm:mobilenetv4_conv_small", tmp_path / "run"
    fixed = _fixed_blocks(name)
    assert 2 in fixed  # a block that cannot be skipped after the first of timm's stage 1
    code, out, err = run_cli("train", "--model", name, "--method", "st", *TINY, "--kl-every", "1", "--kl-plans", "4",
                             "--kl-probe-size", "16", "--out", run)
    assert code == 0, err
    code, out, err = run_cli("measure", "--ckpt", run / "checkpoint.pt", "--calib-size", "16",
                             "--out", tmp_path / "measure.csv", "--quiet")
    assert code == 0, err
    plans = [*pd.read_csv(run / "kl_trajectory.csv")["plan"], *pd.read_csv(tmp_path / "measure.csv")["plan"]]
    assert len(plans) > 4
    for plan in plans:
        blocks = _blocks(plan)
        assert set(fixed) <= set(blocks) and blocks == sorted(blocks), plan
    code, out, _ = run_cli("models", name)
    assert code == 0 and re.search(r"stage 2: 2 ConvBnAct\n", out), out  # the plan strings show it alone


def test_st_on_a_network_without_skippable_blocks_is_refused_up_front(run_cli, tmp_path):
    code, out, err = run_cli("train", "--model", "timm:lcnet_050", "--method", "st", *TINY, "--out", tmp_path / "run")
    assert "no skippable block" in _one_line_error(code, out, err) and "--method ct" in err
    assert not (tmp_path / "run").exists()


BAD_ARGS = {  # builder arguments that build a network that cannot run, and what the error must name
    "patch larger than the image": ("timm:vit_tiny_patch16_224", ["img_size=32", "patch_size=64"], "patch_size=64"),
    "no blocks": ("timm:vit_tiny_patch16_224", ["img_size=32", "depth=0"], "depth=0"),
    "an empty last stage": ("timm:convnext_atto", ["depths=1,1,1,0"], "depths=[1, 1, 1, 0]"),
    "an empty swin stage": ("timm:swin_tiny_patch4_window7_224",
                            ["img_size=32", "window_size=4", "depths=1,1,1,0"], "depths=[1, 1, 1, 0]"),
    "one input channel": ("timm:resnet18", ["in_chans=1"], "in_chans=1"),
    "an unknown activation": ("timm:vit_tiny_patch16_224", ["img_size=32", "act_layer=nosuch"], "act_layer='nosuch'"),
}


def _model_args(args: list[str]) -> list[str]:
    return [part for arg in args for part in ("--model-arg", arg)]


@pytest.mark.parametrize("case", BAD_ARGS)
def test_builder_arguments_that_cannot_run_are_one_line_before_the_data_is_read(case, run_cli, tmp_path):
    name, args, named = BAD_ARGS[case]
    # A data folder that does not exist: the network is refused before the data is looked at.
    code, out, err = run_cli("train", "--model", name, *_model_args(args), "--dataset", "imagefolder", "--data-dir",
                             tmp_path / "nowhere", *TINY, "--out", tmp_path / "run")
    assert named in _one_line_error(code, out, err)
    assert list(tmp_path.iterdir()) == []


def test_measure_destruct_and_influence_refuse_a_network_that_cannot_run_before_any_data(run_cli, tmp_path):
    """The weights of a one-channel network (a state-dict file of its own keys) load, but it cannot run on RGB data:
    `measure`, `destruct` and `influence` build it through the same check as `train`."""
    weights = tmp_path / "grey.pt"
    torch.save(timm.create_model("test_resnet", in_chans=1, num_classes=10).state_dict(), weights)
    for command in (["measure"], ["destruct", "--mode", "delete-one"], ["influence"]):
        code, out, err = run_cli(*command, "--ckpt", weights, "--model", "timm:test_resnet",
                                 "--model-arg", "in_chans=1", "--dataset", "imagefolder",
                                 "--data-dir", tmp_path / "nowhere", "--out", tmp_path / f"{command[0]}.csv")
        assert "in_chans=1" in _one_line_error(code, out, err)
    assert [p.name for p in tmp_path.iterdir()] == ["grey.pt"]


# Each listed family's smallest network that runs on 32x32 digits: (name, builder arguments).
SMALLEST = {
    "timm:vit": ("timm:test_vit", ["img_size=32", "patch_size=8"]),
    "timm:convnext": ("timm:test_convnext", []),
    "timm:resnet": ("timm:test_resnet", []),
    "timm:regnet": ("timm:regnetx_002", []),
    "timm:efficientnet": ("timm:test_efficientnet", ["depth_multiplier=3"]),  # 1 block a stage: none skippable
    "timm:mobilenetv3": ("timm:mobilenetv3_small_050", []),
    "timm:swin": ("timm:swin_tiny_patch4_window7_224", ["img_size=32", "window_size=4", "embed_dim=16",
                                                       "depths=1,2", "num_heads=1,2"]),
    "torchvision:vit": ("torchvision:vit_b_16", ["image_size=32"]),
    "torchvision:convnext": ("torchvision:convnext_tiny", []),
    "torchvision:resnet": ("torchvision:resnet18", []),
    "torchvision:regnet": ("torchvision:regnet_x_400mf", []),
    "torchvision:efficientnet": ("torchvision:efficientnet_b0", []),
    "torchvision:mobilenetv3": ("torchvision:mobilenet_v3_small", []),
    "torchvision:swin": ("torchvision:swin_t", []),
}


def test_every_listed_family_has_its_smallest_network():
    assert set(SMALLEST) == {f"{f.library}:{f.name}" for f in FAMILIES}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(SMALLEST))
def test_every_listed_familys_smallest_network_trains_with_st_and_measures(family, run_cli, tmp_path):
    name, args = SMALLEST[family]
    code, out, err = run_cli("train", "--model", name, *_model_args(args), "--method", "st", *TINY,
                             "--out", tmp_path / "run")
    assert code == 0, err
    code, out, err = run_cli("measure", "--ckpt", tmp_path / "run" / "checkpoint.pt", "--calib-size", "16",
                             "--space", "uniform", "--out", tmp_path / "measure.csv", "--quiet")
    assert code == 0, err
    assert pd.read_csv(tmp_path / "measure.csv")["top1"].between(0, 100).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["timm:efficientnet_em", "timm:lcnet_050", "timm:mobilenetv4_conv_small"])
def test_networks_with_unskippable_blocks_inside_stages_train_with_ct_and_measure(name, run_cli, tmp_path):
    code, out, err = run_cli("train", "--model", name, "--method", "ct", *TINY, "--kl-every", "1",
                             "--kl-probe-size", "16", "--out", tmp_path / "run")
    assert code == 0, err
    code, out, err = run_cli("measure", "--ckpt", tmp_path / "run" / "checkpoint.pt", "--calib-size", "16",
                             "--space", "uniform", "--out", tmp_path / "measure.csv", "--quiet")
    assert code == 0, err
    fixed = set(_fixed_blocks(name))
    for plan in [*pd.read_csv(tmp_path / "run" / "kl_trajectory.csv")["plan"],
                 *pd.read_csv(tmp_path / "measure.csv")["plan"]]:
        assert fixed <= set(_blocks(plan)), plan
