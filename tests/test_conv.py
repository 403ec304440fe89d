import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from loafing.conv import CroppedConv2d, crop_conv_kernels


@pytest.mark.parametrize("kernel, stride, groups", [(3, 1, 1), (3, 2, 1), (5, 1, 8), (5, 2, 8), (7, 1, 4),
                                                    (7, 2, 2)])
def test_cropped_conv_equals_full_conv_for_every_small_size(kernel, stride, groups):
    torch.manual_seed(0)
    for size_h, size_w, padding in itertools.product(range(1, 9), (1, 3, 8), range(0, kernel // 2 + 1)):
        if size_h + 2 * padding < kernel or size_w + 2 * padding < kernel:
            continue
        conv = nn.Conv2d(8, 16, kernel, stride, padding, groups=groups, bias=True)
        x = torch.randn(2, 8, size_h, size_w, requires_grad=True)
        expected = F.conv2d(x, conv.weight, conv.bias, stride, padding, 1, groups)
        conv = crop_conv_kernels(conv)
        assert isinstance(conv, CroppedConv2d)
        got = conv(x)
        assert got.shape == expected.shape, (size_h, size_w, padding)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        grad_expected = torch.autograd.grad(expected.square().sum(), (x, conv.weight))
        grad_got = torch.autograd.grad(conv(x).square().sum(), (x, conv.weight))
        for a, b in zip(grad_got, grad_expected):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_state_dict_is_unchanged():
    conv = nn.Conv2d(4, 4, 5, padding=2, groups=4)
    before = dict(conv.state_dict())
    conv = crop_conv_kernels(conv)
    assert list(conv.state_dict()) == list(before)


class StandardizedConv2d(nn.Conv2d):
    """A Conv2d subclass computing something else (weight standardization): cropping its taps would be wrong."""

    def forward(self, x):
        w = (self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)) / self.weight.std(dim=(1, 2, 3), keepdim=True)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


def test_convolutions_are_replaced_in_their_parents_with_the_same_parameters():
    torch.manual_seed(0)
    shared = nn.Conv2d(4, 4, 3, padding=1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Sequential(shared, nn.ReLU(), shared),
                        StandardizedConv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1))
    saved = {k: v.clone() for k, v in net.state_dict().items()}  # a checkpoint written before the replacement
    params = dict(net.named_parameters())
    x = torch.rand(2, 3, 1, 1)
    expected = net(x)
    assert crop_conv_kernels(net) is net
    assert [type(m) for m in net.modules() if isinstance(m, nn.Conv2d)] == [
        CroppedConv2d, CroppedConv2d, StandardizedConv2d, nn.Conv2d]  # the shared one is listed once
    assert net[1][0] is net[1][2]
    assert all(p is params[name] for name, p in net.named_parameters())
    assert list(net.state_dict()) == list(saved)
    net.load_state_dict(saved)
    torch.testing.assert_close(net(x), expected)
