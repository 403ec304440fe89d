import copy
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from loafing.bn import batchnorms, frozen_bn_stats, preserved_bn_state, recalibrate_bn
from loafing.data import images_only, make_loader, seeded_subset
from loafing.models import MODELS, create_model
from loafing.plans import ordered_plan, sample_ordered_plan
from loafing.methods import ct_loss, st_loss_shared, st_loss_simple


def bn_state(model):
    return [t.clone() for bn in batchnorms(model) for t in (bn.running_mean, bn.running_var, bn.num_batches_tracked)]


def calib_batches(digits, seed, size=200):
    return list(images_only(make_loader(seeded_subset(digits.train_plain, size, seed), 64)))


def test_recalibration_is_the_cumulative_average_of_batch_statistics(digits):
    model = create_model("resnet20-cifar", 10)
    plan = ordered_plan(model.layout, (1, 2, 3))
    batches = calib_batches(digits, seed=0)
    recalibrate_bn(model, plan, batches)
    assert not model.training
    # independent expectation for the stem BN and the first BN of block 4 (stage 2, after a prefix)
    net = model.net
    means, variances = [], []
    block4_means = []
    model.train()
    for x in batches:
        z = net.conv1((x - model.input_mean) / model.input_std)
        means.append(z.mean(dim=(0, 2, 3)))
        variances.append(z.var(dim=(0, 2, 3), unbiased=True))
        h = F.relu(F.batch_norm(z, None, None, net.bn1.weight, net.bn1.bias, training=True, eps=net.bn1.eps))
        with frozen_bn_stats(model):  # train-mode normalization, as during recalibration
            h = model.block(1)(h)
        block4_means.append(model.block(4).conv1(h).mean(dim=(0, 2, 3)))
    torch.testing.assert_close(net.bn1.running_mean, torch.stack(means).mean(0))
    torch.testing.assert_close(net.bn1.running_var, torch.stack(variances).mean(0))
    torch.testing.assert_close(model.block(4).bn1.running_mean, torch.stack(block4_means).mean(0), rtol=1e-4,
                               atol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_recalibration_of_every_model_averages_the_batch_statistics_each_bn_sees(name):
    """For every BN a plan runs: running mean / var = the mean over calibration batches of its input's
    batch mean / unbiased variance; BNs the plan skips are left reset."""
    torch.manual_seed(0)
    model = create_model(name, 10)
    plan = ordered_plan(model.layout, tuple(max(1, n // 2) for n in model.layout.stage_sizes))
    seen: dict[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    hooks = [bn.register_forward_hook(lambda m, inputs, output: seen.setdefault(m, []).append(
        (inputs[0].mean(dim=(0, 2, 3)), inputs[0].var(dim=(0, 2, 3), unbiased=True)))) for bn in batchnorms(model)]
    batches = [torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    recalibrate_bn(model, plan, batches)
    for hook in hooks:
        hook.remove()
    assert seen
    for bn in batchnorms(model):
        if bn in seen:
            assert len(seen[bn]) == len(batches)
            torch.testing.assert_close(bn.running_mean, torch.stack([m for m, _ in seen[bn]]).mean(0))
            torch.testing.assert_close(bn.running_var, torch.stack([v for _, v in seen[bn]]).mean(0))
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
