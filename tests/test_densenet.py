"""DenseNets: the staged view against torchvision's own forward, prefix plans against separately built shallower
DenseNets holding the same weights, old checkpoint key names, and the inside-vs-alone grid."""
from __future__ import annotations

import random

import pytest
import torch
from torch import nn
from torchvision.models.densenet import _DenseBlock, _Transition

from loafing.checkpoint import load_model
from loafing.config import TrainConfig, make_train_config
from loafing.data import load_digits_splits
from loafing.destruct import destroyed_networks
from loafing.errors import LoafingError
from loafing.eval_config import EvalConfig
from loafing.inside import inside_vs_alone
from loafing.measure import measure_plans
from loafing.methods import get_method
from loafing.models import create_model
from loafing.models.densenet import BLOCK_CONFIGS
from loafing.plans import get_space, ordered_plan, parse_plan
from test_plan_tree import perturbed

DEPTHS = sorted(BLOCK_CONFIGS)


def perturbed_densenet(name, width_mult=0.25, seed=1):
    """A DenseNet with its own seeded weights and non-trivial BN statistics and affine parameters, in eval mode."""
    torch.manual_seed(seed)
    return perturbed(name, width_mult=width_mult)


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("variant", ["", "-cifar"])
def test_the_main_plan_is_torchvisions_densenet(depth, variant):
    model = perturbed_densenet(f"densenet{depth}{variant}", width_mult=1.0)
    assert model.layout.stage_sizes == BLOCK_CONFIGS[depth]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.net((x - model.input_mean) / model.input_std)  # torchvision's DenseNet.forward
        assert torch.equal(model(x), expected)


def shallower_densenet(host: nn.Module, depths: tuple[int, ...], growth: int) -> nn.Module:
    """torchvision's DenseNet modules built for `depths` layers per dense block, every weight copied from the first
    layers of `host`'s dense blocks, with the host's transitions (cut to the channels that exist), its stem, its
    final BN and classifier (cut likewise): what the host's prefix plan should compute."""
    f = host.features
    features = nn.Sequential()
    for name in ("conv0", "norm0", "relu0", "pool0"):
        features.add_module(name, getattr(f, name))
    channels = f.conv0.out_channels
    for i, n in enumerate(depths, start=1):
        block = _DenseBlock(n, channels, 4, growth, 0.0)
        source = getattr(f, f"denseblock{i}")
        for j in range(1, n + 1):
            block[f"denselayer{j}"].load_state_dict(source[f"denselayer{j}"].state_dict())
        features.add_module(f"denseblock{i}", block)
        channels += n * growth
        if i < len(depths):
            host_transition = getattr(f, f"transition{i}")
            out = host_transition.conv.out_channels
            transition = _Transition(channels, out)
            state = host_transition.state_dict()
            transition.load_state_dict({k: (v[:channels] if k.startswith("norm") and v.dim() == 1 else
                                            v[:, :channels] if k == "conv.weight" else v) for k, v in state.items()})
            features.add_module(f"transition{i}", transition)
            channels = out
    norm5 = nn.BatchNorm2d(channels)
    norm5.load_state_dict({k: v[:channels] if v.dim() == 1 else v for k, v in f.norm5.state_dict().items()})
    features.add_module("norm5", norm5)
    classifier = nn.Linear(channels, host.classifier.out_features)
    classifier.load_state_dict({"weight": host.classifier.weight[:, :channels], "bias": host.classifier.bias})

    class Shallower(nn.Module):
        def __init__(self):
            super().__init__()
            self.features, self.classifier = features, classifier

        def forward(self, x):
            out = torch.relu(self.features(x))
            return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))
    return Shallower().eval()


@pytest.mark.parametrize("host, depths", [(169, (6, 12, 24, 16)), (264, (6, 12, 48, 32)), (121, (2, 5, 1, 9))])
def test_a_prefix_plan_is_the_shallower_densenet_with_the_same_weights(host, depths):
    model = perturbed_densenet(f"densenet{host}-cifar")
    reference = shallower_densenet(model.net, depths, growth=8)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        expected = reference((x - model.input_mean) / model.input_std)
        torch.testing.assert_close(model(x, ordered_plan(model.layout, depths)), expected, rtol=1e-5, atol=1e-5)


def test_dense_layers_can_only_be_dropped_from_the_end_of_their_block():
    layout = create_model("densenet121-cifar", 10, 0.25).layout
    assert layout.prefix_only and len(get_space("ordered", layout)) == 6 * 12 * 24 * 16
    with pytest.raises(LoafingError, match="stage 1 must keep its first blocks in order"):
        create_model("densenet121-cifar", 10, 0.25).check_plan(parse_plan(
            "[1,3] " + " ".join("[" + ",".join(map(str, s)) + "]" for s in layout.stages[1:])))
    for mode in ("delete-one", "delete-many", "permute"):
        with pytest.raises(LoafingError, match="cannot be deleted or moved"):
            destroyed_networks(layout, mode, 10, 0)
    for space in ("stochastic", "raw"):
        with pytest.raises(LoafingError, match="can only be shortened from the end"):
            get_space(space, layout)
    model = create_model("densenet121-cifar", 10, 0.25)
    for sampling in ("stochastic", "raw"):
        with pytest.raises(LoafingError, match="can only be shortened from the end"):
            get_method("st").build(model, make_train_config({"model": "densenet121-cifar", "method": "st",
                                                             "sampling": sampling, "num_classes": 10}),
                                   random.Random(0))


def test_st_trains_a_densenet_on_its_dense_block_prefixes():
    model = create_model("densenet121-cifar", 10, 0.25).train()
    step = get_method("st").build(model, TrainConfig(model="densenet121-cifar", method="st", num_classes=10),
                                  random.Random(0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    before = [p.detach().clone() for p in model.parameters()]
    result = step.loss(x, y)
    result.loss.backward()
    optimizer.step()
    assert result.kl.item() > 0 and torch.isfinite(result.loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_old_torchvision_key_names_load(tmp_path):
    model = perturbed_densenet("densenet121")
    state = model.net.state_dict()
    old = {k.replace("norm1", "norm.1").replace("conv2", "conv.2"): v for k, v in state.items()
           if not k.endswith("num_batches_tracked")}  # as old files: saved before BN counted its batches
    assert any("norm.1" in k for k in old)
    torch.save(old, tmp_path / "densenet121-old.pth")
    loaded = load_model(str(tmp_path / "densenet121-old.pth"), "densenet121", width_mult=0.25)
    assert all(torch.equal(v, loaded.model.net.state_dict()[k]) for k, v in state.items()
               if not k.endswith("num_batches_tracked"))


def test_the_grids_diagonal_is_each_network_measured_alone(tmp_path):
    data = load_digits_splits()
    networks = []
    for depth in (121, 169):
        model = perturbed_densenet(f"densenet{depth}-cifar", width_mult=0.125, seed=depth)
        torch.save(model.net.state_dict(), tmp_path / f"densenet{depth}.pth")
        networks.append(load_model(str(tmp_path / f"densenet{depth}.pth"), f"densenet{depth}-cifar",
                                   width_mult=0.125))
    evaluation = EvalConfig(calib_size=64, calib_seed=0, recalibrate=True, batch_size=128, device="cpu")
    table = inside_vs_alone(networks, data, evaluation, progress=False)
    inside = table[~table["is_main"]]
    assert list(zip(inside["model"], inside["depths"])) == [("densenet169-cifar", "6-12-24-16")]
    for loaded in networks:
        alone = measure_plans(loaded, [loaded.model.layout.main_plan], data, evaluation, progress=False)
        row = table[(table["model"] == loaded.config["model"]) & table["is_main"]]
        assert row["top1"].item() == alone["top1"].item() and row["kl"].item() == alone["kl"].item()
