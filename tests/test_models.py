import pytest
import torch
import torchvision

from loafing.errors import LoafingError
from loafing.models import MODELS, create_model
from loafing.plans import ordered_plan, uniform_space


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_trains_through_the_main_plan(name):
    model = create_model(name, num_classes=7)
    model.train()
    x = torch.rand(4, 3, 32, 32)
    out = model(x)
    assert out.shape == (4, 7)
    assert torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"


@pytest.mark.parametrize("name", list(MODELS))
def test_main_plan_equals_the_wrapped_network(name):
    """The staged view (stem, blocks, head) must compute exactly what the original module computes."""
    model = create_model(name, num_classes=5).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ours = model(x)
        reference = model.net((x - model.input_mean) / model.input_std)
    torch.testing.assert_close(ours, reference)


@pytest.mark.parametrize("name", ["resnet20-cifar", "mobilenet_v3_large", "resnet50"])
def test_sub_plan_runs_fewer_blocks_and_changes_output(name):
    model = create_model(name, num_classes=5).eval()
    calls = []
    for b in model.layout.main_plan.sequence():
        model.block(b).register_forward_hook(lambda m, i, o, b=b: calls.append(b))
    smallest = uniform_space(model.layout)[0]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        full = model(x)
        calls.clear()
        sub = model(x, smallest)
    assert calls == list(smallest.sequence())
    assert not torch.allclose(full, sub, rtol=1e-3, atol=0)


def test_unknown_model_lists_choices():
    with pytest.raises(LoafingError, match="valid choices: resnet20-cifar, .*mobilenet_v3_large"):
        create_model("resnet18", 10)


def test_width_mult_only_where_the_spec_says():
    supported = sorted(name for name, spec in MODELS.items() if spec.width_mult)
    assert "mobilenet_v3_large" in supported and "densenet121" in supported and "resnet20-cifar" not in supported
    with pytest.raises(LoafingError, match=f"only supported by: {', '.join(supported)}$"):
        create_model("resnet20-cifar", 10, width_mult=0.5)
    for name in ("mobilenet_v3_large", "densenet121-cifar"):
        small = create_model(name, 10, width_mult=0.5)
        big = create_model(name, 10)
        assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in big.parameters())
        assert small.layout == big.layout


def test_cifar_resnet_block_counts():
    for depth in (20, 32, 44, 56, 110):
        layout = create_model(f"resnet{depth}-cifar", 10).layout
        n = (depth - 2) // 6
        assert layout.stage_sizes == (n, n, n)
        # option A: only the first block of stages 2 and 3 changes shape
        assert set(range(1, 3 * n + 1)) - layout.skippable == {n + 1, 2 * n + 1}
    model = create_model("resnet20-cifar", 10)
    assert sum(p.numel() for p in model.parameters()) == 269_722  # He et al.: 0.27M


def test_invalid_plan_in_forward():
    model = create_model("resnet20-cifar", 10)
    with pytest.raises(LoafingError, match="cannot be dropped"):
        model(torch.rand(1, 3, 32, 32), ordered_plan(model.layout, (1, 1, 1)).__class__(((1,), (5,), (7,))))


@pytest.mark.parametrize("name", list(MODELS))
def test_stem_blocks_and_head_cover_every_parameter_once(name):
    model = create_model(name, num_classes=5)
    parts = model.stem_modules() + [model.block(b) for b in model.layout.main_plan.sequence()] + model.head_modules()
    owned = [id(p) for m in parts for p in m.parameters()]
    assert len(owned) == len(set(owned))
    assert set(owned) == {id(p) for p in model.parameters()}


@pytest.mark.parametrize("name, reference", [
    ("mobilenet_v3_large", lambda: torchvision.models.mobilenet_v3_large(num_classes=5)),
    ("resnet50", lambda: torchvision.models.resnet50(num_classes=5)),
])
def test_staged_model_equals_plain_torchvision_module(name, reference):
    """Kernel cropping (loafing.conv) must not change what the torchvision network computes."""
    model = create_model(name, num_classes=5).eval()
    plain = reference().eval()
    plain.load_state_dict(model.net.state_dict())
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain((x - model.input_mean) / model.input_std), rtol=1e-4, atol=1e-5)
