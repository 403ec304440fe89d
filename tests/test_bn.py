import copy
import random

import pandas as pd
from PIL import Image
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from loafing.bn import (batches_of_two_or_more, batchnorms, frozen_bn_stats, preserved_bn_state, recalibrate_bn,
                        synchronized_bn)
from loafing.data import calibration_images, images_only, load_dataset, make_loader, seeded_subset
from loafing.errors import LoafingError
from loafing.models import MODELS, StagedModel, create_model
from loafing.segments import is_segment_aware
from loafing.plans import ordered_plan, sample_ordered_plan
from loafing.methods import ct_loss, st_loss_shared, st_loss_simple
from test_segments import BatchNormAct2d


def bn_state(model):
    return [t.clone() for bn in batchnorms(model) for t in (bn.running_mean, bn.running_var, bn.num_batches_tracked)]


def calib_batches(digits, seed, size=200):
    return list(images_only(make_loader(seeded_subset(digits.train_plain, size, seed), 64)))


def whole_set(inputs):
    """Mean and unbiased variance per channel of a list of [N, C, ...] inputs taken together, in float64."""
    x = torch.cat(inputs).double().transpose(0, 1).flatten(1)
    return x.mean(1), x.var(1, unbiased=True)


def test_recalibration_gives_the_statistics_of_the_whole_calibration_set(digits):
    model = create_model("resnet20-cifar", 10)
    plan = ordered_plan(model.layout, (1, 2, 3))
    batches = calib_batches(digits, seed=0)
    assert [len(x) for x in batches] == [64, 64, 64, 8]  # unequal batches: a mean of batch means would differ
    recalibrate_bn(model, plan, batches)
    assert not model.training
    # independent expectation for the stem BN and the first BN of block 4 (stage 2, after a prefix)
    net = model.net
    stem_inputs, block4_inputs = [], []
    model.train()
    for x in batches:
        z = net.conv1((x - model.input_mean) / model.input_std)
        stem_inputs.append(z)
        h = F.relu(F.batch_norm(z, None, None, net.bn1.weight, net.bn1.bias, training=True, eps=net.bn1.eps))
        with frozen_bn_stats(model):  # train-mode normalization, as during recalibration
            h = model.block(1)(h)
        block4_inputs.append(model.block(4).conv1(h))
    for bn, inputs in ((net.bn1, stem_inputs), (model.block(4).bn1, block4_inputs)):
        mean, var = whole_set(inputs)
        torch.testing.assert_close(bn.running_mean, mean.float(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bn.running_var, var.float(), rtol=1e-4, atol=1e-5)
        assert bn.num_batches_tracked.item() == len(batches)


@pytest.mark.parametrize("name", list(MODELS))
def test_recalibration_of_every_model_gives_each_bn_the_statistics_of_all_its_inputs(name):
    """For every BN a plan runs: running mean / var = the mean / unbiased variance of everything it saw over the
    calibration batches (of unequal sizes, one of them a single image); BNs the plan skips are left reset."""
    torch.manual_seed(0)
    model = create_model(name, 10)
    plan = ordered_plan(model.layout, tuple(max(1, n // 2) for n in model.layout.stage_sizes))
    seen: dict[nn.Module, list[torch.Tensor]] = {}
    hooks = [bn.register_forward_hook(lambda m, inputs, output: seen.setdefault(m, []).append(inputs[0]))
             for bn in batchnorms(model)]
    batches = [torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i, n in enumerate((6, 3, 1))]
    recalibrate_bn(model, plan, batches)
    for hook in hooks:
        hook.remove()
    assert seen
    for bn in batchnorms(model):
        if bn in seen:
            assert [len(x) for x in seen[bn]] == [6, 4]  # the single image joined the batch before it
            mean, var = whole_set(seen[bn])
            torch.testing.assert_close(bn.running_mean, mean.float(), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(bn.running_var, var.float(), rtol=1e-4, atol=1e-5)
        else:
            assert bn.num_batches_tracked.item() == 0 and torch.all(bn.running_var == 1)


def test_recalibration_changes_stats_and_is_deterministic_for_a_seed(digits):
    model = create_model("mobilenet_v3_large", 10, width_mult=0.5)
    before = bn_state(model)
    plan = ordered_plan(model.layout, (1, 2, 3, 1, 2))
    runs = []
    for seed in (0, 0, 1):
        m = copy.deepcopy(model)
        recalibrate_bn(m, plan, calib_batches(digits, seed))
        runs.append(bn_state(m))
    assert any(not torch.equal(a, b) for a, b in zip(before, runs[0]))
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert any(not torch.equal(a, b) for a, b in zip(runs[0], runs[2]))


def test_preserved_bn_state_restores_everything(digits):
    model = create_model("resnet20-cifar", 10).eval()
    before = bn_state(model)
    with preserved_bn_state(model):
        recalibrate_bn(model, None, calib_batches(digits, 0))
        assert any(not torch.equal(a, b) for a, b in zip(before, bn_state(model)))
    assert all(torch.equal(a, b) for a, b in zip(before, bn_state(model)))
    assert not model.training
    assert all(bn.momentum == 0.1 for bn in batchnorms(model))


def test_a_batchnorm_without_running_statistics_is_left_to_its_batches(digits):
    model = create_model("resnet20-cifar", 10).eval()
    old = model.block(4).bn1
    stateless = nn.BatchNorm2d(old.num_features, track_running_stats=False)  # normalizes every batch by itself
    stateless.load_state_dict({"weight": old.weight, "bias": old.bias})
    model.block(4).bn1 = stateless
    kept = [bn for bn in batchnorms(model) if bn is not stateless]
    before = [t.clone() for bn in kept for t in (bn.running_mean, bn.running_var)]
    with preserved_bn_state(model):
        recalibrate_bn(model, None, calib_batches(digits, 0))
        assert stateless.running_mean is None
        assert any(not torch.equal(a, bn_t) for a, bn_t in zip(before, [t for bn in kept
                                                                      for t in (bn.running_mean, bn.running_var)]))
    after = [t for bn in kept for t in (bn.running_mean, bn.running_var)]
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    # The prefix-sharing evaluator (measure, destruct, influence) gives what the one-by-one reference gives.
    from loafing.evaluate import evaluate_plans_one_by_one
    from loafing.plan_tree import evaluate_plans

    plans = [model.layout.main_plan, ordered_plan(model.layout, (1, 2, 3)), ordered_plan(model.layout, (3, 1, 2))]
    test = make_loader(seeded_subset(digits.test, 96, 1), 32)
    calib = make_loader(seeded_subset(digits.train_plain, 64, 0), 32)
    tree, _ = evaluate_plans(model, plans, test, calib, torch.device("cpu"), progress=False)
    reference = evaluate_plans_one_by_one(model, plans, test, calib, torch.device("cpu"), progress=False)
    assert tree["top1"].tolist() == pytest.approx(reference["top1"].tolist())
    assert tree["loss"].tolist() == pytest.approx(reference["loss"].tolist(), rel=1e-4)


@pytest.mark.parametrize("st_loss", [st_loss_simple, st_loss_shared])
def test_st_sub_network_forward_leaves_main_running_stats_alone(st_loss):
    model = create_model("resnet20-cifar", 10).train()
    twin = copy.deepcopy(model)
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    plan = sample_ordered_plan(model.layout, random.Random(0))
    ct_loss(model, x, y)
    result = st_loss(twin, x, y, plan, 1.0)
    assert result.kl.item() > 0  # the sub-network really ran
    assert all(torch.equal(a, b) for a, b in zip(bn_state(model), bn_state(twin)))


def test_frozen_bn_stats_still_normalizes_with_batch_statistics():
    model = create_model("resnet20-cifar", 10).train()
    x = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        expected = copy.deepcopy(model)(x)
        with frozen_bn_stats(model):
            got = model(x)
    torch.testing.assert_close(got, expected)
    assert all(bn.track_running_stats for bn in batchnorms(model))


@pytest.mark.parametrize("sizes, merged", [((64, 64, 1), (64, 65)), ((1, 1, 1), (3,)), ((1, 1, 1, 1), (2, 2)),
                                           ((1, 5), (6,)), ((3, 1, 4), (3, 5)), ((1,), (1,)), ((), ())])
def test_a_batch_of_one_image_joins_a_neighbour(sizes, merged):
    batches = [torch.full((n, 1), float(i)) for i, n in enumerate(sizes)]
    out = list(batches_of_two_or_more(batches))
    assert tuple(len(x) for x in out) == merged
    if batches:
        assert torch.equal(torch.cat(out), torch.cat(batches))  # nothing lost, order kept


def test_a_calibration_set_of_one_image_is_its_statistics_or_refused_on_1x1_maps(digits):
    model = create_model("resnet20-cifar", 10)  # its smallest maps are 8x8 at 32 px: 64 values per channel
    x = calib_batches(digits, seed=0, size=1)
    recalibrate_bn(model, None, x)
    z = model.net.conv1((x[0] - model.input_mean) / model.input_std)
    mean, var = whole_set([z])
    torch.testing.assert_close(model.net.bn1.running_mean, mean.float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.net.bn1.running_var, var.float(), rtol=1e-4, atol=1e-5)
    # MobileNetV3 at 32 px ends on 1x1 maps: one image gives those BNs one value per channel, no variance
    mobilenet = create_model("mobilenet_v3_large", 10, width_mult=0.5)
    before = bn_state(mobilenet)
    with pytest.raises(LoafingError, match=r"^BN layer 'net\.features\.\d+\..*' sees a single value per channel "
                                           r"\(one image, 1x1 feature maps\).*calibrate on 2 or more images$"):
        with preserved_bn_state(mobilenet):
            recalibrate_bn(mobilenet, None, x)
    assert all(torch.equal(a, b) for a, b in zip(before, bn_state(mobilenet)))
    recalibrate_bn(mobilenet, None, calib_batches(digits, seed=0, size=2))  # two images are enough


def norm_act_model():
    """A staged network whose norm layers are a BatchNorm subclass with its own forward (a norm-activation layer)."""
    torch.manual_seed(0)
    net = nn.ModuleDict({"stem": nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), BatchNormAct2d(4)),
                         "block": nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), BatchNormAct2d(4)),
                         "head": nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))})
    for bn in batchnorms(net):
        nn.init.normal_(bn.weight)
        nn.init.normal_(bn.bias)
    return StagedModel(net, [net["block"]], (1,), (True,), stem=net["stem"], head=net["head"])


def test_a_norm_activation_layer_gets_frozen_stats_and_whole_set_recalibration():
    model = norm_act_model()
    norms = batchnorms(model)
    assert len(norms) == 2 and all(type(bn) is BatchNormAct2d and is_segment_aware(bn) for bn in norms)
    x = torch.rand(8, 3, 4, 4)
    model.train()
    before = bn_state(model)
    with torch.no_grad(), frozen_bn_stats(model):
        got = model(x)
    assert all(torch.equal(a, b) for a, b in zip(before, bn_state(model)))  # running statistics untouched
    with torch.no_grad():
        torch.testing.assert_close(got, copy.deepcopy(model)(x))  # normalized with batch statistics all the same
    seen = []
    hook = model.net["block"][1].register_forward_hook(lambda m, inputs, output: seen.append(inputs[0]))
    batches = [torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(n)) for n in (5, 4, 1)]
    recalibrate_bn(model, None, batches)
    hook.remove()
    stem_mean, stem_var = whole_set([model.net["stem"][0](b) for b in batches])  # independent of the batching
    torch.testing.assert_close(norms[0].running_mean, stem_mean.float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(norms[0].running_var, stem_var.float(), rtol=1e-4, atol=1e-5)
    block_mean, block_var = whole_set(seen)
    torch.testing.assert_close(norms[1].running_mean, block_mean.float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(norms[1].running_var, block_var.float(), rtol=1e-4, atol=1e-5)
    assert [len(b) for b in seen] == [5, 5] and not model.training


def test_sync_bn_puts_syncbatchnorms_holding_the_same_tensors_in_place_and_back():
    model = create_model("resnet20-cifar", 10).train()
    originals = batchnorms(model)
    keys = list(model.state_dict())
    x = torch.rand(4, 3, 32, 32)
    reference = copy.deepcopy(model)
    expected = reference(x)
    with synchronized_bn(model):
        inside = batchnorms(model)
        assert all(type(bn) is nn.SyncBatchNorm and is_segment_aware(bn) for bn in inside)
        assert list(model.state_dict()) == keys
        # no process group here: SyncBatchNorm normalizes on its own, updating the original layers' tensors
        torch.testing.assert_close(model(x), expected)
    assert batchnorms(model) == originals and all(type(bn) is nn.BatchNorm2d for bn in originals)
    assert all(torch.equal(a, b) for a, b in zip(bn_state(model), bn_state(reference)))
    assert originals[0].num_batches_tracked.item() == 1
    with pytest.raises(LoafingError, match="--sync-bn cannot synchronize BatchNormAct2d layers"):
        with synchronized_bn(norm_act_model()):
            pass


def test_odd_calibration_and_batch_sizes_from_the_command_line(run_cli, tmp_path):
    """MobileNetV3 at 32 px ends on 1x1 maps: a calibration batch of one image used to crash BN (issue 25)."""
    torch.manual_seed(0)
    ckpt = tmp_path / "mobilenet.pth"
    torch.save(create_model("mobilenet_v3_large", 10, width_mult=0.5).net.state_dict(), ckpt)
    common = ("measure", "--ckpt", ckpt, "--model", "mobilenet_v3_large", "--width-mult", 0.5, "--dataset", "digits",
              "--device", "cpu", "--quiet", "--plan", "[1] [3] [6] [10] [12]")
    for name, options in (("last-batch-of-one", ("--calib-size", 257)), ("odd", ("--calib-size", 7, "--batch-size", 2))):
        code, _, err = run_cli(*common, *options, "--out", tmp_path / f"{name}.csv")
        assert code == 0, err
        df = pd.read_csv(tmp_path / f"{name}.csv")
        assert df["calib_size"].tolist() == [options[1]] and df["recalibrated"].all()
    code, _, err = run_cli(*common, "--calib-size", 1, "--out", tmp_path / "one.csv")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "sees a single value per channel" in err and "calibrate on 2 or more images" in err
    assert not (tmp_path / "one.csv").exists()
    for option, flag in (("--batch-size", "--batch-size"), ("--train-size", "--train-size")):
        code, _, err = run_cli("train", "--model", "resnet20-cifar", "--epochs", 1, "--device", "cpu", option, 1,
                               "--out", tmp_path / "run")
        assert code == 2 and err.strip().splitlines() == [
            f"loafing: error: {flag} must be at least 2 (BatchNorm cannot train on one image), got 1"]
        assert not (tmp_path / "run").exists()


def test_calibration_images_are_training_crops_and_flips_drawn_once_per_seed(tmp_path):
    """Each calibration image is its stored image shifted within the recipe's 4-pixel zero padding and maybe
    mirrored (checked by search over every shift and flip); every pass gives the same images, and training's
    random stream is not touched."""
    generator = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for i in range(12):
            (tmp_path / split / str(i % 2)).mkdir(parents=True, exist_ok=True)
            pixels = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=generator)
            Image.fromarray(pixels.numpy()).save(tmp_path / split / str(i % 2) / f"{i}.png")
    data = load_dataset("imagefolder", str(tmp_path), recipe="cifar")
    calib = calibration_images(data, 8, seed=5)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = [calib[i][0] for i in range(len(calib))]
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a, calib[i][0]) for i, a in enumerate(first))
    plain = calibration_images(data, 8, seed=5, augmented=False)
    moved = 0
    for image, (stored, _) in zip(first, (plain[i] for i in range(len(plain)))):
        padded = F.pad(stored, (4, 4, 4, 4))
        views = {(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (False, True)
                 if torch.equal(image, (padded.flip(-1) if flip else padded)[:, dy:dy + 32, dx:dx + 32])}
        assert views, "not a crop of the padded image, nor of its mirror"
        moved += (4, 4, False) not in views
    assert moved >= 6  # 81 x 2 equally likely views: at most a few of 8 images come out as stored
    assert not all(torch.equal(a, b) for a, b in zip(first, (calibration_images(data, 8, seed=6)[i][0]
                                                            for i in range(8))))
