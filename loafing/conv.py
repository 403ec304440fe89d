"""Convolutions that skip the kernel taps which only ever meet zero padding.

On small feature maps (MobileNetV3's 5x5 depthwise kernels on 1x1 or 2x2 maps at 32x32 inputs,
ResNet-50's 3x3 kernels on 1x1 maps) most taps of a padded convolution multiply padding, and
PyTorch's CPU kernels for these shapes are pathologically slow (about 50 ms for a 5x5 depthwise
conv on a 64x960x1x1 batch, 0.4 ms for the equivalent 1x1). Cropping the kernel to the taps that
can reach the input gives the same result with the same parameters.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _taps(size: int, kernel: int, stride: int, padding: int) -> tuple[int, int, int, int, int]:
    """(first tap, last tap, left pad, right pad, output size) of one spatial dimension."""
    out = (size + 2 * padding - kernel) // stride + 1
    first = max(0, padding - stride * (out - 1))
    last = min(kernel - 1, size - 1 + padding)
    left = padding - first
    right = max(0, stride * (out - 1) - left + (last - first) - (size - 1))
    return first, last, left, right, out


class CroppedConv2d(nn.Conv2d):
    """nn.Conv2d (zero padding, no dilation) that convolves with only the taps able to reach the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        h0, h1, top, bottom, out_h = _taps(x.shape[-2], kh, sh, ph)
        w0, w1, left, right, out_w = _taps(x.shape[-1], kw, sw, pw)
        if (h0, h1, w0, w1) == (0, kh - 1, 0, kw - 1):
            return super().forward(x)
        weight = self.weight[:, :, h0:h1 + 1, w0:w1 + 1]
        if top == bottom and left == right:
            y = F.conv2d(x, weight, self.bias, self.stride, (top, left), 1, self.groups)
        else:
            y = F.conv2d(F.pad(x, (left, right, top, bottom)), weight, self.bias, self.stride, 0, 1, self.groups)
        return y[..., :out_h, :out_w]


def _eligible(m: nn.Module) -> bool:
    """A plain nn.Conv2d (a subclass may compute differently) with zero padding, no dilation and a kernel over 1x1."""
    return (type(m) is nn.Conv2d and m.padding_mode == "zeros" and m.dilation == (1, 1)
            and not isinstance(m.padding, str) and max(m.kernel_size) > 1)


def _cropped(conv: nn.Conv2d) -> CroppedConv2d:
    """A CroppedConv2d holding `conv`'s own parameters (the same tensors, so the same state-dict entries)."""
    new = CroppedConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                        conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode, device="meta")
    new.weight, new.bias = conv.weight, conv.bias
    return new.train(conv.training)


def crop_conv_kernels(module: nn.Module) -> nn.Module:
    """Replace every eligible Conv2d in `module` by a CroppedConv2d with the same parameters (same state dict).

    Like `torch.nn.SyncBatchNorm.convert_sync_batchnorm`, the result is returned: `module` itself when it is
    not a convolution (its children are replaced), a new module when it is one. A convolution registered in
    several places stays one module.
    """
    done: dict[nn.Module, nn.Module] = {}

    def replace(m: nn.Module) -> nn.Module:
        if m not in done:
            done[m] = _cropped(m) if _eligible(m) else m
            for name, child in list(m._modules.items()):  # named_children() would list a shared module once
                new = replace(child) if child is not None else None
                if new is not child:
                    setattr(m, name, new)
        return done[m]

    return replace(module)
