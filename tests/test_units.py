"""The unit view (`--granularity unit`): every transformer block class split into its attention and MLP units.

Each case is a tiny network with random weights. In the unit view the main plan must compute what the network
itself computes, deleting one unit must be exactly the network with that half of its block contributing zero (built
here by replacing the module that ends the unit's branch with one returning zeros), the prefix tree must agree with
one-by-one evaluation, and a checkpoint trained in one view must measure in the other from the command line.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import Subset

from loafing.config import make_train_config
from loafing.errors import LoafingError
from loafing.evaluate import evaluate_plans_one_by_one
from loafing.methods import st_loss_shared, st_loss_simple
from loafing.models import create_model
from loafing.models.adapter import AdaptedModel, adapted
from loafing.models.families import FAMILIES, family_of
from loafing.models.family_base import Transitioned
from loafing.models.units import SPLITS, Unit, split_block
from loafing.plan_tree import evaluate_plans
from loafing.plans import Plan, ordered_space
from loafing.schema import read_table, write_table
from loafing.train import train

VIT_ARGS = {"img_size": 32, "patch_size": 8, "depth": 3, "embed_dim": 32, "num_heads": 2}
SWIN_ARGS = {"img_size": 32, "patch_size": 2, "window_size": 4, "embed_dim": 16, "depths": [2, 2], "num_heads": [1, 2],
             "drop_path_rate": 0.0}

# Case -> the block's modules that end its attention branch and its MLP branch: replaced by zeros, the block's unit
# adds nothing to its input (post-norm blocks end with their norm, pre-norm ones with the attention or layer scale).
ZEROED = {
    "timm:vit": ("ls1", "ls2"), "timm:vit-post": ("norm1", "norm2"), "timm:swin": ("attn", "mlp"),
    "torchvision:vit": ("self_attention", "mlp"), "torchvision:swin": ("attn", "mlp"),
    "torchvision:swin-v2": ("norm1", "norm2"),
}
CASES = sorted(ZEROED)


def _network(case: str) -> tuple[nn.Module, str]:
    """The case's tiny network, built by its library, and the library's name."""
    import timm
    from timm.models.vision_transformer import ResPostBlock
    from torchvision.models import swin_transformer, vision_transformer

    if case == "timm:vit":  # a layer scale that is no identity, so that the units must apply it
        return timm.create_model("vit_tiny_patch16_224", num_classes=10, init_values=0.5, **VIT_ARGS), "timm"
    if case == "timm:vit-post":
        return timm.create_model("vit_tiny_patch16_224", num_classes=10, block_fn=ResPostBlock, **VIT_ARGS), "timm"
    if case == "timm:swin":
        return timm.create_model("swin_tiny_patch4_window7_224", num_classes=10, **SWIN_ARGS), "timm"
    if case == "torchvision:vit":
        return vision_transformer.VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=2,
                                                    hidden_dim=32, mlp_dim=64, num_classes=10), "torchvision"
    v2 = {"block": swin_transformer.SwinTransformerBlockV2, "downsample_layer": swin_transformer.PatchMergingV2}
    return swin_transformer.SwinTransformer(patch_size=[2, 2], embed_dim=16, depths=[2, 2], num_heads=[1, 2],
                                            window_size=[4, 4], stochastic_depth_prob=0.0, num_classes=10,
                                            **(v2 if case.endswith("v2") else {})), "torchvision"


@functools.lru_cache(maxsize=None)
def _built(case: str) -> nn.Module:
    torch.manual_seed(0)
    net, _ = _network(case)
    with torch.no_grad():  # the libraries initialize some weights to zero: random ones everywhere test more
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return net.eval()


def views(case: str) -> tuple[AdaptedModel, AdaptedModel]:
    """The case's network (a fresh copy) seen by blocks and by units, both over the same modules."""
    net = copy.deepcopy(_built(case))
    family = family_of(case.partition(":")[0], net)
    return adapted(net, family).eval(), adapted(net, family, "unit").eval()


def test_every_family_with_units_and_every_split_block_class_is_tested():
    with_units = {f"{f.library}:{f.name}" for f in FAMILIES if len(f.units) > 1}
    assert with_units == {"timm:vit", "timm:swin", "torchvision:vit", "torchvision:swin"}
    classes = set()
    for case in CASES:
        blocks, units = views(case)
        assert blocks.family.units == ("attn", "mlp")
        classes |= {f"{type(u.block).__module__}.{type(u.block).__qualname__}" for u in _units(units)}
        assert [u.name for u in _units(units)] == list(blocks.family.units) * blocks.layout.n_blocks
    assert classes == set(SPLITS)
    by_name = create_model("timm:swin_tiny_patch4_window7_224", 10, model_args=SWIN_ARGS, granularity="unit")
    assert by_name.granularity == "unit" and by_name.layout == views("timm:swin")[1].layout


def _units(model: AdaptedModel) -> list[Unit]:
    """The unit view's units in order (a stage's first one unwrapped from its transition)."""
    steps = [model.block(u) for u in model.layout.main_plan.sequence()]
    return [s.block if isinstance(s, Transitioned) else s for s in steps]


def _inputs(model: AdaptedModel, n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n, 3, 32, 32)
    return x, (x - model.input_mean) / model.input_std


@pytest.mark.parametrize("case", CASES)
def test_the_unit_views_main_plan_is_the_networks_own_forward(case):
    blocks, units = views(case)
    assert units.layout.stage_sizes == tuple(2 * n for n in blocks.layout.stage_sizes)
    x, normalized = _inputs(units)
    with torch.no_grad():  # the same operations in the same order: equal to the last bit
        assert torch.equal(units(x), units.net(normalized)) and torch.equal(units(x), blocks(x))
    assert units.state_dict().keys() == blocks.state_dict().keys()


@pytest.mark.parametrize("case", CASES)
def test_a_deleted_unit_is_the_network_with_that_units_branch_zero(case):
    blocks, units = views(case)
    attn, mlp = ZEROED[case]
    x, normalized = _inputs(units, 2)
    checked = 0
    for b in blocks.layout.main_plan.sequence():
        block = blocks.block(b).block if isinstance(blocks.block(b), Transitioned) else blocks.block(b)
        for unit, part in ((2 * b - 1, attn), (2 * b, mlp)):  # block b's attention is unit 2b-1, its MLP unit 2b
            if unit not in units.layout.skippable:
                assert unit == 2 * b - 1 and isinstance(units.block(unit), Transitioned)  # it carries the merging
                continue
            plan = Plan(tuple(tuple(u for u in stage if u != unit) for stage in units.layout.stages))
            reference = _zeroed(blocks.net, block, part)
            with torch.no_grad():
                assert torch.equal(units(x, plan), reference(normalized)), (unit, part)
            checked += 1
    assert checked >= 2 * blocks.layout.n_blocks - 1


class _Zero(nn.Module):
    """A module returning zeros shaped as its input (with no attention weights, as MultiheadAttention's pair)."""

    def __init__(self, pair: bool) -> None:
        super().__init__()
        self.pair = pair

    def forward(self, x: torch.Tensor, *args, **kwargs):
        return (torch.zeros_like(x), None) if self.pair else torch.zeros_like(x)


def _zeroed(net: nn.Module, block: nn.Module, part: str) -> nn.Module:
    """A copy of `net` whose `block`'s submodule `part` returns zeros."""
    path = next(name for name, m in net.named_modules() if m is block)
    copied = copy.deepcopy(net)
    copied.get_submodule(path).register_module(part, _Zero(part == "self_attention"))
    return copied.eval()


@pytest.mark.parametrize("case", CASES)
def test_each_units_parameters_are_its_own(case):
    _, units = views(case)
    found = [id(p) for u in _units(units) for p in u.parameters()]
    assert len(found) == len(set(found))  # no parameter in two units
    blocks = {u.block for u in _units(units)}
    assert set(found) == {id(p) for block in blocks for p in block.parameters()}  # and none of a block left out


@pytest.fixture(scope="module")
def small_digits():
    from loafing.data import load_digits_splits

    data = load_digits_splits()
    return dataclasses.replace(data, test=Subset(data.test, range(32)), train_plain=Subset(data.train_plain, range(16)))


@pytest.mark.parametrize("case", CASES)
def test_plan_tree_equals_one_by_one_evaluation_over_units(case, small_digits):
    from loafing.data import make_loader

    _, model = views(case)
    stage = model.layout.stages[-1]
    permuted = Plan((*model.layout.stages[:-1], (stage[0], *reversed(stage[1:]))))  # the last stage's units reordered
    deleted = Plan((*model.layout.stages[:-1], stage[:1] + stage[2:]))  # the first block's MLP unit gone
    plans = list(dict.fromkeys([*ordered_space(model.layout)[:4], permuted, deleted]))
    test, calib = make_loader(small_digits.test, 16), make_loader(small_digits.train_plain, 16)
    tree = evaluate_plans(model, plans, test, calib, torch.device("cpu"), progress=False)[0]
    single = evaluate_plans_one_by_one(model, plans, test, calib, torch.device("cpu"), progress=False)
    assert tree["plan"].tolist() == [str(p) for p in plans]
    assert tree["top1"].tolist() == single["top1"].tolist()
    torch.testing.assert_close(torch.tensor(tree["loss"].tolist()), torch.tensor(single["loss"].tolist()),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", ["timm:swin", "torchvision:vit"])
def test_shared_and_simple_st_steps_agree_over_units_in_float64(case):
    _, model = views(case)
    model = model.double().train()
    plan = ordered_space(model.layout)[5]  # a sub-network that ends inside a block, after an attention unit
    x, y = torch.rand(2, 3, 32, 32, dtype=torch.float64), torch.arange(2)
    losses, grads = [], []
    for step in (st_loss_simple, st_loss_shared):
        trial = copy.deepcopy(model)
        loss = step(trial, x, y, plan, 1.0).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad for p in trial.parameters() if p.grad is not None])
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-10, atol=1e-12)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A tiny ViT trained one epoch on digits with CT in the block view, and with ST over units (KL recorded)."""
    root = tmp_path_factory.mktemp("units")
    for name, settings in (("block", {}), ("unit", {"method": "st", "granularity": "unit", "kl_every": 1})):
        config = make_train_config({"model": "timm:vit_tiny_patch16_224", "model_args": {**VIT_ARGS, "depth": 2},
                                    "dataset": "digits", "epochs": 1, "train_size": 32, "batch_size": 16,
                                    "monitor_calib_size": 16, "kl_probe_size": 16, "device": "cpu",
                                    "out": str(root / name), **settings})
        train(config, progress=False)
    return {name: root / name for name in ("block", "unit")}


def test_a_block_trained_checkpoint_measures_and_destructs_in_the_unit_view(runs, tmp_path, run_cli):
    ckpt = runs["block"] / "checkpoint.pt"
    code, out, err = run_cli("measure", "--ckpt", ckpt, "--granularity", "unit", "--out", tmp_path / "m.csv", "--quiet")
    assert code == 0, err
    units = read_table(tmp_path / "m.csv", "measure")
    assert units["granularity"].tolist() == ["unit"] * 4 and units["plan"].tolist()[-1] == "[1,2,3,4]"
    code, _, err = run_cli("measure", "--ckpt", ckpt, "--space", "uniform", "--out", tmp_path / "b.csv", "--quiet")
    blocks = read_table(tmp_path / "b.csv", "measure")
    assert code == 0 and blocks["granularity"].tolist() == ["block"] * 2, err
    # The whole network is the same network in either view.
    assert units.loc[units["is_main"], "top1"].item() == blocks.loc[blocks["is_main"], "top1"].item()
    code, out, err = run_cli("destruct", "--ckpt", ckpt, "--mode", "delete-one", "--granularity", "unit",
                             "--out", tmp_path / "d.csv", "--quiet")
    deleted = read_table(tmp_path / "d.csv", "destruct")
    assert code == 0 and deleted["layers"].tolist() == ["", "1", "2", "3", "4"], err
    assert (deleted["granularity"] == "unit").all() and "[1,2,4]" in deleted["plan"].tolist()
    code, _, err = run_cli("influence", "--ckpt", ckpt, "--granularity", "unit", "--out", tmp_path / "i.csv",
                           "--quiet")
    influence = read_table(tmp_path / "i.csv", "influence")
    assert code == 0 and influence["block"].tolist() == [1, 2, 3, 4] and (influence["granularity"] == "unit").all()


def test_st_over_units_is_recorded_and_measured_in_its_view(runs, tmp_path, run_cli):
    run = runs["unit"]
    assert json.loads((run / "config.json").read_text())["granularity"] == "unit"
    kl = read_table(run / "kl_trajectory.csv", "kl_trajectory")
    assert len(kl) == 4 and (kl["granularity"] == "unit").all()
    code, _, err = run_cli("measure", "--ckpt", run / "checkpoint.pt", "--out", tmp_path / "m.csv", "--quiet")
    assert code == 0 and (read_table(tmp_path / "m.csv", "measure")["granularity"] == "unit").all(), err
    code, _, err = run_cli("measure", "--ckpt", run / "checkpoint.pt", "--granularity", "block", "--out",
                           tmp_path / "b.csv", "--quiet")
    assert code == 0 and read_table(tmp_path / "b.csv", "measure")["plan"].tolist() == ["[1]", "[1,2]"], err


def test_checkpoints_of_two_views_are_compared_block_by_block(runs):
    from loafing.inside import load_family

    paths = [str(runs["block"] / "checkpoint.pt"), str(runs["unit"] / "checkpoint.pt")]
    networks, _ = load_family(paths)
    assert [(n.model.granularity, n.model.layout.n_blocks) for n in networks] == [("block", 2), ("block", 2)]
    with pytest.raises(LoafingError, match="inside-vs-alone compares networks block by block"):
        load_family(paths, granularity="unit")


@pytest.mark.parametrize("args, message", [
    (["models", "resnet20-cifar", "--granularity", "unit"],
     "model 'resnet20-cifar' has one residual unit per block; families with units: timm:vit, timm:swin, "
     "torchvision:vit, torchvision:swin"),
    (["models", "timm:convnext_atto", "--granularity", "unit"], "ConvNeXt (a timm:convnext network) has one residual "
     "unit per block; families with units: timm:vit"),
    (["models", "timm:vit_tiny_patch16_224", "--granularity", "layer"],
     "unknown granularity 'layer'; valid choices: block, unit"),
    (["train", "--model", "resnet20-cifar", "--granularity", "unit"], "has one residual unit per block"),
    (["measure", "--ckpt", "x.pt", "--granularity", "units"], "unknown granularity 'units'; valid choices: block, unit"),
])
def test_a_model_without_units_and_an_unknown_view_are_one_line_errors(args, message, run_cli, tmp_path):
    out = ["--out", tmp_path / "out"] if args[0] in ("train", "measure") else []
    code, _, err = run_cli(*args, *out)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not list(tmp_path.iterdir())


def test_a_block_that_runs_its_units_in_parallel_is_refused_in_one_line():
    import timm
    from timm.models.vision_transformer import ParallelScalingBlock

    net = timm.create_model("vit_tiny_patch16_224", num_classes=10, block_fn=ParallelScalingBlock, **VIT_ARGS)
    with pytest.raises(LoafingError, match="cannot split a ParallelScalingBlock block") as err:
        adapted(net, family_of("timm", net), "unit")
    assert "\n" not in str(err.value)
    with pytest.raises(LoafingError, match="cannot split a Linear"):
        split_block(nn.Linear(2, 2))


def test_the_models_command_lists_units(run_cli):
    code, out, err = run_cli("models", "timm:swin_tiny_patch4_window7_224", *[f"--model-arg={k}={v}" for k, v in (
        ("img_size", 32), ("patch_size", 2), ("window_size", 4), ("embed_dim", 16), ("depths", "2,2"),
        ("num_heads", "1,2"))], "--granularity", "unit")
    assert code == 0, err
    assert "stages 4-4, main plan [1,2,3,4] [5,6,7,8], skippable [1, 2, 3, 4, 6, 7, 8]" in out
    assert "stage 2: 5 PatchMerging+SwinTransformerBlock.attn, 6* SwinTransformerBlock.mlp" in out


def test_tables_written_before_the_unit_view_read_as_blocks(tmp_path):
    table = {"run": ["r"], "model": ["m"], "width_mult": [1.0], "method": ["ct"], "seed": [0], "dataset": ["digits"],
             "trained_plan": [""], "plan": ["[1,2]"], "depths": ["2"], "n_blocks": [2], "is_main": [True],
             "top1": [50.0], "top5": [90.0], "loss": [1.0], "n_examples": [10], "kl": [0.0], "recalibrated": [False],
             "calib_size": [0], "calib_seed": [0], "space": ["ordered"]}
    pd.DataFrame(table).to_csv(tmp_path / "old.csv", index=False)
    assert read_table(tmp_path / "old.csv", "measure")["granularity"].tolist() == ["block"]
    write_table(read_table(tmp_path / "old.csv", "measure").assign(granularity="unit"), tmp_path / "new.csv",
                "measure")
    assert read_table(tmp_path / "new.csv", "measure")["granularity"].tolist() == ["unit"]
