import copy
import random

import pytest
import torch
import torch.nn.functional as F

from loafing.bn import batchnorms, frozen_bn_stats, preserved_bn_state, recalibrate_bn
from loafing.data import images_only, make_loader, seeded_subset
from loafing.models import create_model
from loafing.plans import ordered_plan, sample_ordered_plan
from loafing.train import StepContext, ct_step, st_step_shared, st_step_simple


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


@pytest.mark.parametrize("st_step", [st_step_simple, st_step_shared])
def test_st_sub_network_forward_leaves_main_running_stats_alone(st_step):
    model = create_model("resnet20-cifar", 10).train()
    twin = copy.deepcopy(model)
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    ctx = StepContext(1.0, lambda: sample_ordered_plan(model.layout, random.Random(0)))
    ct_step(model, x, y, ctx)
    result = st_step(twin, x, y, ctx)
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
