import pytest
import torch
import torch.nn.functional as F
from torch import nn

from loafing.errors import LoafingError
from loafing.segments import is_segment_aware, make_segment_aware, stacked_batches


def manual_bn(x, weight, bias, eps):
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


def test_stacked_batchnorm_normalizes_each_segment_and_tracks_only_the_first():
    torch.manual_seed(0)
    bn = make_segment_aware(nn.Sequential(nn.BatchNorm2d(4, momentum=0.5)))[0]
    assert is_segment_aware(bn)
    nn.init.normal_(bn.weight)
    nn.init.normal_(bn.bias)
    first, rest = torch.randn(6, 4, 3, 3) * 2 + 1, torch.randn(5, 4, 3, 3) - 3
    with stacked_batches(6):
        out = bn(torch.cat([first, rest]))
    torch.testing.assert_close(out[:6], manual_bn(first, bn.weight, bn.bias, bn.eps), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out[6:], manual_bn(rest, bn.weight, bn.bias, bn.eps), rtol=1e-4, atol=1e-5)
    # running statistics: one momentum-0.5 update from the first segment alone (unbiased variance)
    torch.testing.assert_close(bn.running_mean, 0.5 * first.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(bn.running_var, 0.5 + 0.5 * first.var(dim=(0, 2, 3), unbiased=True))
    assert bn.num_batches_tracked.item() == 1


def test_outside_stacked_batches_and_in_eval_the_layers_are_plain():
    torch.manual_seed(0)
    x = torch.randn(8, 4, 2, 2)
    plain, aware = nn.BatchNorm2d(4), make_segment_aware(nn.Sequential(nn.BatchNorm2d(4)))[0]
    torch.testing.assert_close(aware(x), plain(x))
    aware.eval()
    plain.eval()
    with stacked_batches(3):
        torch.testing.assert_close(aware(x), plain(x))


class BatchNormAct2d(nn.BatchNorm2d):
    """A norm-activation layer as timm's BatchNormAct2d: its own forward, BN's batch-statistics rules, then an act."""

    def forward(self, x):
        use_batch = self.training or self.running_mean is None
        factor = 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = self.momentum
        tracked = not self.training or self.track_running_stats
        x = F.batch_norm(x, self.running_mean if tracked else None, self.running_var if tracked else None,
                         self.weight, self.bias, use_batch, factor, self.eps)
        return F.leaky_relu(x, 0.2)


def test_a_batchnorm_subclass_with_its_own_forward_normalizes_each_segment():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 4, 1), BatchNormAct2d(4, momentum=0.5))
    keys = list(net.state_dict())
    bn = make_segment_aware(net)[1]
    assert type(bn) is BatchNormAct2d and is_segment_aware(bn) and list(net.state_dict()) == keys
    nn.init.normal_(bn.weight)
    nn.init.normal_(bn.bias)
    first, rest = torch.randn(6, 4, 3, 3) * 2 + 1, torch.randn(5, 4, 3, 3) - 3
    x = torch.cat([first, rest]).requires_grad_()
    with stacked_batches(6):
        out = bn(x)
    act = lambda t: F.leaky_relu(t, 0.2)
    torch.testing.assert_close(out[:6], act(manual_bn(first, bn.weight, bn.bias, bn.eps)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out[6:], act(manual_bn(rest, bn.weight, bn.bias, bn.eps)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_mean, 0.5 * first.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(bn.running_var, 0.5 + 0.5 * first.var(dim=(0, 2, 3), unbiased=True))
    assert bn.num_batches_tracked.item() == 1
    # the same gradients as the two segments run as two batches
    grads = torch.autograd.grad(out.square().sum(), (x, bn.weight))
    twin = BatchNormAct2d(4)
    twin.load_state_dict(bn.state_dict())
    a, b = twin(first.clone().requires_grad_()), twin(rest.clone().requires_grad_())
    expected = torch.autograd.grad(a.square().sum() + b.square().sum(), (twin.weight,))
    torch.testing.assert_close(grads[1], expected[0], rtol=1e-4, atol=1e-4)
    with stacked_batches(6):  # twice: nothing left over from the first call
        torch.testing.assert_close(bn(torch.cat([first, rest]))[6:], out[6:].detach())


def test_making_a_layer_segment_aware_twice_changes_nothing():
    bn = make_segment_aware(make_segment_aware(nn.BatchNorm2d(3)))
    assert len(bn._forward_pre_hooks) == 1 and len(bn._forward_hooks) == 1


@pytest.mark.parametrize("norm", [nn.BatchNorm1d, nn.SyncBatchNorm])
def test_other_batchnorm_layers_are_segment_aware(norm):
    bn = make_segment_aware(nn.Sequential(norm(4)))[0]
    assert is_segment_aware(bn)
    first, rest = torch.randn(6, 4, 5), torch.randn(3, 4, 5) + 2
    with stacked_batches(6):
        out = bn(torch.cat([first, rest]))
    expected = F.batch_norm(rest, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
    torch.testing.assert_close(out[6:], expected)


def test_instance_norm_with_running_statistics_is_refused():
    with pytest.raises(LoafingError, match="InstanceNorm2d layers with running statistics are not supported"):
        make_segment_aware(nn.Sequential(nn.InstanceNorm2d(4, track_running_stats=True)))
