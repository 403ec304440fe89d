import torch
from torch import nn

from loafing.segments import SegmentedBatchNorm2d, make_segment_aware, stacked_batches


def manual_bn(x, weight, bias, eps):
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


def test_stacked_batchnorm_normalizes_each_segment_and_tracks_only_the_first():
    torch.manual_seed(0)
    bn = make_segment_aware(nn.Sequential(nn.BatchNorm2d(4, momentum=0.5)))[0]
    assert isinstance(bn, SegmentedBatchNorm2d)
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
