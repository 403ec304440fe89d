"""timm and torchvision networks through the adapter: every family, tiny, on digits.

Each family is built small (random weights, 32x32 inputs). The staged view must compute what the network itself
computes, a deleted block must be exactly the network with that block replaced by nn.Identity (built here
independently), the ST steps must agree, and measure / destruct / train must run and say what they did.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import re

import pytest
import torch
from torch import nn
from torch.utils.data import Subset

from loafing.bn import batchnorms, has_batchnorm
from loafing.checkpoint import LoadedModel, load_model
from loafing.config import make_train_config
from loafing.destruct import destruct
from loafing.errors import LoafingError
from loafing.eval_config import EvalConfig
from loafing.evaluate import evaluate_plans_one_by_one
from loafing.measure import measure_plans
from loafing.methods import st_loss_shared, st_loss_simple
from loafing.models import create_model, get_spec
from loafing.models.adapter import AdaptedModel, adapted, parse_model_args
from loafing.models.families import FAMILIES, family_of
from loafing.plan_tree import evaluate_plans
from loafing.plans import Plan, get_space, ordered_space, parse_plan, uniform_space
from loafing.train import train

# Family -> (model name, builder arguments): small enough to train on digits in seconds.
NAMED = {
    "timm:vit": ("timm:vit_tiny_patch16_224",
                 {"img_size": 32, "patch_size": 8, "depth": 4, "embed_dim": 32, "num_heads": 2}),
    "timm:convnext": ("timm:convnext_atto", {"dims": [8, 16, 24, 32], "depths": [1, 3, 2, 1]}),
    "timm:resnet": ("timm:resnet18", {"layers": [2, 2, 1, 1], "channels": [8, 16, 24, 32], "stem_width": 8}),
    "timm:efficientnet": ("timm:test_efficientnet", {"depth_multiplier": 3}),
    "timm:mobilenetv3": ("timm:mobilenetv3_small_050", {}),
    "timm:swin": ("timm:swin_tiny_patch4_window7_224", {"img_size": 32, "patch_size": 2, "window_size": 4,
                                                         "embed_dim": 16, "depths": [2, 2], "num_heads": [1, 2],
                                                         "drop_path_rate": 0.0}),
    "torchvision:resnet": ("torchvision:resnet18", {}),
    "torchvision:mobilenetv3": ("torchvision:mobilenet_v3_small", {"dropout": 0.0}),
}


def _direct(family: str) -> nn.Module:
    """Networks whose named builders fix their size (torchvision's) or take no size arguments (RegNets), built tiny
    from their own classes (without stochastic depth: the ST steps are compared draw for draw)."""
    from timm.models import regnet as timm_regnet
    from torchvision.models import convnext, efficientnet, regnet, swin_transformer, vision_transformer

    if family == "timm:regnet":
        return timm_regnet.RegNet(timm_regnet.RegNetCfg(depth=7, w0=8, wa=8.0, wm=2.0, group_size=8, stem_width=8),
                                  num_classes=10)
    if family == "torchvision:regnet":
        return regnet.RegNet(regnet.BlockParams.from_init_params(depth=7, w_0=8, w_a=8.0, w_m=2.0, group_width=8),
                             num_classes=10, stem_width=8)
    if family == "torchvision:vit":
        return vision_transformer.VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=2,
                                                    hidden_dim=32, mlp_dim=64, num_classes=10)
    if family == "torchvision:convnext":
        return convnext.ConvNeXt([convnext.CNBlockConfig(8, 16, 2), convnext.CNBlockConfig(16, 24, 2),
                                  convnext.CNBlockConfig(24, None, 1)], num_classes=10)
    if family == "torchvision:efficientnet":
        setting = [efficientnet.MBConvConfig(1, 3, 1, 8, 8, 2), efficientnet.MBConvConfig(4, 3, 2, 8, 16, 2)]
        return efficientnet.EfficientNet(setting, dropout=0.0, stochastic_depth_prob=0.0, num_classes=10,
                                         last_channel=32)
    return swin_transformer.SwinTransformer(patch_size=[2, 2], embed_dim=16, depths=[2, 2], num_heads=[1, 2],
                                            window_size=[4, 4], stochastic_depth_prob=0.0, num_classes=10)


DIRECT = ("timm:regnet", "torchvision:regnet", "torchvision:vit", "torchvision:convnext", "torchvision:efficientnet",
          "torchvision:swin")
ALL = sorted([*NAMED, *DIRECT])
LAYERNORM = {"timm:vit", "timm:convnext", "timm:swin", "torchvision:vit", "torchvision:convnext", "torchvision:swin"}


def tiny(family: str) -> AdaptedModel:
    """The family's tiny network, staged, in eval mode (a fresh copy of one built once)."""
    return copy.deepcopy(_built(family)).eval()


@functools.lru_cache(maxsize=None)
def _built(family: str) -> AdaptedModel:
    torch.manual_seed(0)
    if family in NAMED:
        name, args = NAMED[family]
        return create_model(name, 10, model_args=args).eval()
    net = _direct(family)
    return adapted(net, family_of(family.partition(":")[0], net)).eval()


def test_every_family_is_tested():
    assert set(ALL) == {f"{f.library}:{f.name}" for f in FAMILIES}


@pytest.mark.parametrize("family", ALL)
def test_main_plan_is_the_networks_own_forward(family):
    model = tiny(family)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        ours, theirs = model(x), model.net((x - model.input_mean) / model.input_std)
    assert ours.shape == (3, 10)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert has_batchnorm(model) == (family not in LAYERNORM)


def _with_identity(net: nn.Module, block: nn.Module) -> nn.Module:
    """A copy of `net` with `block` (found by identity) replaced by nn.Identity where the network holds it."""
    path = next(name for name, m in net.named_modules() if m is block)
    copied = copy.deepcopy(net)
    parent_path, _, attribute = path.rpartition(".")
    parent = copied.get_submodule(parent_path) if parent_path else copied
    parent.register_module(attribute, nn.Identity())
    return copied


@pytest.mark.parametrize("family", ALL)
def test_a_deleted_block_is_the_network_with_that_block_an_identity(family):
    model = tiny(family)
    layout = model.layout
    assert layout.skippable, f"{family}'s tiny network has no skippable block to delete"
    for deleted in (min(layout.skippable), max(layout.skippable)):
        plan = Plan(tuple(tuple(b for b in stage if b != deleted) for stage in layout.stages))
        x = torch.rand(2, 3, 32, 32)
        reference = _with_identity(model.net, model.block(deleted)).eval()
        with torch.no_grad():
            torch.testing.assert_close(model(x, plan), reference((x - model.input_mean) / model.input_std),
                                       rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ALL)
def test_stem_blocks_and_head_hold_every_batchnorm_once(family):
    model = tiny(family)
    parts = model.stem_modules() + [model.block(b) for b in model.layout.main_plan.sequence()] + model.head_modules()
    found = [id(bn) for m in parts for bn in batchnorms(m)]
    assert sorted(found) == sorted(id(bn) for bn in batchnorms(model))
    blocks = [id(p) for b in model.layout.main_plan.sequence() for p in model.block(b).parameters()]
    assert len(blocks) == len(set(blocks))


@pytest.mark.parametrize("family", ALL)
def test_shared_and_simple_st_steps_agree_in_float64(family):
    model = tiny(family).double().train()
    plans = ordered_space(model.layout)
    plan = plans[len(plans) // 2]
    x, y = torch.rand(2, 3, 32, 32, dtype=torch.float64), torch.arange(2)
    results = []
    for step in (st_loss_simple, st_loss_shared):
        trial = copy.deepcopy(model)
        loss = step(trial, x, y, plan, 1.0).loss
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in trial.parameters() if p.grad is not None],
                        [bn.running_mean.clone() for bn in batchnorms(trial)]))
    (loss_a, grads_a, stats_a), (loss_b, grads_b, stats_b) = results
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-10, atol=1e-12)
    assert len(grads_a) == len(grads_b) > 0
    for a, b in zip(grads_a + stats_a, grads_b + stats_b):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)  # float32 would differ by about 1e-4


@pytest.fixture(scope="module")
def small_digits():
    from loafing.data import load_digits_splits

    data = load_digits_splits()
    return dataclasses.replace(data, test=Subset(data.test, range(48)), train_plain=Subset(data.train_plain, range(32)))


def _loaded(family: str, data) -> LoadedModel:
    model = tiny(family)
    model.set_normalization(data.mean, data.std)
    name, args = NAMED.get(family, (family + "-tiny", {}))
    return LoadedModel(model, {"model": name, "model_args": args, "num_classes": 10, "method": "ct", "run": "t"},
                       "loafing")


@pytest.mark.parametrize("family", ALL)
def test_plan_tree_equals_one_by_one_evaluation(family, small_digits):
    from loafing.data import make_loader

    model = _loaded(family, small_digits).model
    plans = uniform_space(model.layout)
    test, calib = make_loader(small_digits.test, 16), make_loader(small_digits.train_plain, 16)
    tree = evaluate_plans(model, plans, test, calib, torch.device("cpu"), progress=False)[0]
    single = evaluate_plans_one_by_one(model, plans, test, calib, torch.device("cpu"), progress=False)
    assert tree["top1"].tolist() == single["top1"].tolist()
    torch.testing.assert_close(torch.tensor(tree["loss"].tolist()), torch.tensor(single["loss"].tolist()),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ALL)
def test_measure_says_whether_it_recalibrated(family, small_digits, monkeypatch):
    import loafing.bn as bn_module

    if family not in NAMED:
        monkeypatch.setattr("loafing.measure.architecture_names", lambda model, depths, args=None: [""] * len(depths))
    calls = {"n": 0}
    real = bn_module.whole_set_statistics

    def counted(model):
        calls["n"] += 1
        return real(model)
    monkeypatch.setattr("loafing.plan_tree.whole_set_statistics", counted)
    loaded = _loaded(family, small_digits)
    df = measure_plans(loaded, uniform_space(loaded.model.layout), small_digits, EvalConfig(calib_size=32),
                       progress=False)
    batchnorm = family not in LAYERNORM
    assert df["recalibrated"].tolist() == [batchnorm] * len(df)
    assert (df["calib_size"] == (32 if batchnorm else 0)).all()
    assert (calls["n"] > 0) == batchnorm  # a LayerNorm network gets no calibration pass at all


@pytest.mark.parametrize("family", ALL)
def test_delete_one_has_a_row_per_skippable_block_and_the_main_network(family, small_digits, monkeypatch):
    if family not in NAMED:
        monkeypatch.setattr("loafing.measure.architecture_names", lambda model, depths, args=None: [""] * len(depths))
    loaded = _loaded(family, small_digits)
    df = destruct(loaded, small_digits, "delete-one", EvalConfig(calib_size=32), progress=False)
    assert len(df) == len(loaded.model.layout.skippable) + 1
    assert sorted(df.loc[df["n"] == 1, "layers"].astype(int)) == sorted(loaded.model.layout.skippable)


def _stages(plan: str) -> list[list[int]]:
    return [[int(b) for b in stage.split(",") if b] for stage in re.findall(r"\[([^\]]*)\]", plan)]


@pytest.mark.parametrize("family", ["timm:vit", "timm:convnext", "timm:efficientnet"])
@pytest.mark.parametrize("mode", ["delete-many", "permute"])
def test_every_destruct_mode(family, mode, small_digits):
    loaded = _loaded(family, small_digits)
    main = [list(stage) for stage in loaded.model.layout.stages]
    df = destruct(loaded, small_digits, mode, EvalConfig(calib_size=32), max_combos=2, progress=False)
    assert df["is_main"].sum() == 1 and (df["n"] > (1 if mode == "delete-many" else 0)).any()
    for plan, n in zip(df["plan"], df["n"]):
        stages = _stages(plan)
        if mode == "permute":  # the main network's blocks reordered by n swaps: more than n, at most 2n, move
            assert [sorted(s) for s in stages] == main
            moved = sum(a != b for s, m in zip(stages, main) for a, b in zip(s, m))
            assert moved == 0 if n == 0 else n < moved <= 2 * n
        else:  # the main network without n of its skippable blocks
            missing = {b for m in main for b in m} - {b for s in stages for b in s}
            assert len(missing) == n and missing <= loaded.model.layout.skippable


def _train(tmp_path, family: str, method: str, **extra):
    name, args = NAMED[family]
    config = make_train_config({"model": name, "model_args": args, "dataset": "digits", "method": method,
                                "epochs": 1, "train_size": 32, "batch_size": 16, "monitor_calib_size": 16,
                                "device": "cpu", "out": str(tmp_path / family.replace(":", "-")), **extra})
    train(config, progress=False)
    return tmp_path / family.replace(":", "-")


@pytest.mark.parametrize("family, method, step", [
    ("timm:vit", "st", "shared"), ("timm:vit", "ct", None), ("timm:efficientnet", "st", "shared"),
    ("timm:efficientnet", "st", "simple"), ("timm:convnext", "st", "shared"), ("torchvision:resnet", "ct", None)])
def test_train_then_measure_the_checkpoint_with_no_model_arguments(family, method, step, tmp_path, run_cli):
    run = _train(tmp_path, family, method, **({"st_step": step} if step else {}))
    saved = json.loads((run / "config.json").read_text())
    assert saved["model_args"] == NAMED[family][1]
    loaded = load_model(run / "checkpoint.pt")
    assert loaded.config["model_args"] == NAMED[family][1]
    assert loaded.model.layout == get_spec(*NAMED[family]).layout()
    code, out, err = run_cli("measure", "--ckpt", run / "checkpoint.pt", "--space", "uniform", "--calib-size", "16",
                             "--out", run / "measure.csv", "--quiet")
    assert code == 0, err
    assert "main top-1" in out


def test_resume_keeps_the_model_arguments(tmp_path, interrupted_training, run_cli):
    name, args = NAMED["timm:vit"]
    out = tmp_path / "vit"
    config = make_train_config({"model": name, "model_args": args, "dataset": "digits", "method": "st", "epochs": 2,
                                "train_size": 32, "batch_size": 16, "monitor_calib_size": 16, "device": "cpu",
                                "out": str(out)})
    interrupted_training(config, 2)
    code, _, err = run_cli("train", "--resume", out, "--quiet")
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["model_args"] == args
    assert load_model(out / "checkpoint.pt").model.layout.stage_sizes == (4,)
    code, _, err = run_cli("train", "--resume", out, "--model-arg", "depth=2")
    assert code == 2 and "--model-arg" in err
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    state["config"]["model_args"] = {"img size": 32}
    torch.save(state, tmp_path / "edited.pt")
    with pytest.raises(LoafingError, match="damaged or not loafing's: its config's model arguments"):
        load_model(tmp_path / "edited.pt")


def test_model_arguments_are_parsed_and_checked():
    assert parse_model_args(["img_size=32", "scale=0.5", "qkv_bias=false", "depths=1,2", "act_layer=gelu"]) == {
        "img_size": 32, "scale": 0.5, "qkv_bias": False, "depths": [1, 2], "act_layer": "gelu"}
    for bad, problem in ((["img_size"], "key=value"), (["a=1", "a=2"], "twice"), (["num_classes=3"], "not allowed"),
                         (["1x=2"], "keyword argument name")):
        with pytest.raises(LoafingError, match=problem):
            parse_model_args(bad)


@pytest.mark.parametrize("name, args, problem", [
    ("timm:vit_tinyy_patch16_224", {}, "did you mean vit_tiny_patch16_224"),
    ("timm:densenet121", {}, "cannot stage; supported families: timm:vit"),
    ("timm:vit_tiny_patch16_224", {"colour": 3}, "valid choices .*img_size"),
    ("resnet20-cifar", {"depth": 3}, "takes no --model-arg"),
    ("nosuchlib:vit", {}, "unknown model 'nosuchlib:vit'; valid choices: .*timm:<name>"),
])
def test_bad_models_are_one_line_errors(name, args, problem):
    with pytest.raises(LoafingError, match=problem) as err:
        get_spec(name, args)
    assert "\n" not in str(err.value)


def test_models_command_lists_families_and_shows_a_network(run_cli):
    code, out, _ = run_cli("models")
    assert code == 0 and all(f"{f.library}:{f.name} (" in out for f in FAMILIES)
    code, out, _ = run_cli("models", "timm:convnext_atto", "--model-arg", "dims=8,16,24,32")
    assert code == 0
    assert "stages 2-2-6-2" in out and "stage 2: 3 Sequential+ConvNeXtBlock, 4* ConvNeXtBlock" in out
    for options in (["--granularity", "unit"], ["--model-arg", "depth=2"]):  # they would be ignored by the listing
        code, out, err = run_cli("models", *options)
        assert code != 0 and "describe one network: name it" in err and "Traceback" not in err + out


def test_a_network_built_for_another_size_says_which(tmp_path):
    model = create_model("timm:vit_tiny_patch16_224", 10, model_args={"img_size": 48, "patch_size": 16, "depth": 1})
    with pytest.raises(LoafingError, match="takes 48x48 images, got 32x32: pass --image-size 48"):
        model(torch.rand(1, 3, 32, 32))


SPLITS = sorted(f"{f.library}:{f.name}" for f in FAMILIES if f.adds_last)


@pytest.mark.parametrize("family", SPLITS)
def test_a_blocks_residual_branch_and_shortcut_make_the_block(family):
    model = tiny(family)
    x = model.stem(torch.rand(2, 3, 32, 32))
    with torch.no_grad():
        for b in model.layout.main_plan.sequence():
            if b in model.layout.skippable:
                block = model.block(b)(x)
                torch.testing.assert_close(model.residual(b, x), block, rtol=0, atol=1e-5)
                torch.testing.assert_close(model.residual(b, x, shortcut=False) + x, block, rtol=0, atol=1e-5)
                torch.testing.assert_close(model.residual(b, x, branch=torch.zeros_like), x)
            x = model.block(b)(x)


def test_raw_paths_of_a_transformer_run_each_blocks_branch_alone(small_digits):
    loaded = _loaded("timm:vit", small_digits)
    plans = get_space("raw", loaded.model.layout)
    assert len(plans) == 2 ** 4
    df = measure_plans(loaded, plans, small_digits, EvalConfig(calib_size=32), progress=False)
    assert len(df) == 16 and df["top1"].between(0, 100).all()
    model, net = loaded.model.eval(), loaded.model.net
    x = torch.rand(2, 3, 32, 32)
    h = net.norm_pre(net.patch_drop(net._pos_embed(net.patch_embed((x - model.input_mean) / model.input_std))))
    with torch.no_grad():
        for block in net.blocks:  # every block's residual branch without its shortcut: the block's output less input
            h = block(h) - h
        torch.testing.assert_close(model(x, parse_plan("[1b,2b,3b,4b]")), net.forward_head(net.norm(h)))


def test_stochastic_depth_trains_where_blocks_split_and_is_refused_where_not(tmp_path):
    assert (_train(tmp_path, "timm:vit", "stochastic-depth") / "checkpoint.pt").exists()
    with pytest.raises(LoafingError, match="needs a model that can run a block's residual branch"):
        _train(tmp_path, "timm:resnet", "stochastic-depth")


@pytest.mark.parametrize("family", ["timm:efficientnet", "timm:mobilenetv3"])
def test_fused_batchnorm_act_layers_are_recalibrated_to_the_sets_statistics(family):
    from timm.layers import BatchNormAct2d

    from loafing.bn import recalibrate_bn

    model = tiny(family)
    fused = [m for m in model.modules() if isinstance(m, BatchNormAct2d)]
    assert fused, f"{family} has no BatchNormAct2d"
    x = torch.rand(12, 3, 32, 32)
    seen = {}
    hooks = [bn.register_forward_pre_hook(lambda m, inputs: seen.__setitem__(m, inputs[0].detach())) for bn in fused]
    with torch.no_grad():  # the set as one batch in train mode: what each layer sees while it is recalibrated
        model.train()(x)
    for hook in hooks:
        hook.remove()
    model.eval()
    recalibrate_bn(model, None, [x])
    assert model.training is False
    for bn in fused:
        inputs = seen[bn].transpose(0, 1).flatten(1)
        torch.testing.assert_close(bn.running_mean, inputs.mean(1), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bn.running_var, inputs.var(1), rtol=1e-4, atol=1e-5)


def test_a_layernorm_networks_epoch_evaluation_is_one_pass_with_nothing_recalibrated(tmp_path, monkeypatch):
    import loafing.train as train_module

    config = make_train_config({"model": "timm:vit_tiny_patch16_224", "model_args": {
        "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}, "dataset": "digits",
        "train_size": 64, "out": str(tmp_path)})
    run = train_module.build_run(config)
    expected = train_module.evaluate(run)

    def no_recalibration(*args, **kwargs):
        raise AssertionError("a network without BatchNorm was recalibrated")
    monkeypatch.setattr(train_module, "evaluate_plans", no_recalibration)
    passes = []
    real_predict = train_module.predict
    monkeypatch.setattr(train_module, "predict", lambda *a, **k: passes.append(1) or real_predict(*a, **k))
    metrics = train_module.evaluate(run)
    assert passes == [1] and metrics == expected
    assert metrics["test_top1_recalibrated"] == metrics["test_top1_running_bn"]
