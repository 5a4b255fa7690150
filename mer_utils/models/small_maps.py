"""Exact CPU kernels for convolutions on tiny feature maps.

At the synthetic demo's size (64 px images, CGPO tiles of 32 px) ReXNet's last stages run at
2 x 2 and 1 x 1 feature maps, and every squeeze-excitation block convolves a 1 x 1 pooled
map. oneDNN's convolution kernels are slow there: a depthwise 3 x 3 backward pass on a
(40, 1044, 1, 1) map takes about as long as on a map a hundred times larger. On maps of at
most ``MAX_POSITIONS`` positions this module computes the same convolutions with plain
tensor products instead:

- a depthwise convolution (one filter per channel) as ``out[n, c, q] = sum_p x[n, c, p]
  K[c, p, q]``, where ``K`` gathers the filter tap that joins input position ``p`` to
  output position ``q`` (zero where the tap falls in the padding);
- a pointwise (1 x 1, stride 1) convolution as a matrix product over channels.

Both are the convolution's own definition, so outputs and gradients equal oneDNN's up to
floating-point rounding (tests/test_models.py checks them in float64). Larger maps, and any
tensor not on the CPU, go to ``nn.Conv2d`` as before. The swap changes the modules' class
only: parameters, state dict keys and checkpoints stay those of ``nn.Conv2d``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MAX_POSITIONS = 4  # feature maps of at most 2 x 2 positions take the tensor-product path

_TAP_INDEX: dict[tuple, tuple[torch.Tensor, int, int]] = {}


def _tap_index(height: int, width: int, conv: nn.Conv2d, device: torch.device) -> tuple[torch.Tensor, int, int]:
    """(P, Q) index of the filter tap joining input position p to output position q, or
    ``kh * kw`` (a zero appended to the taps) where none does; and the output height, width."""
    key = (height, width, *conv.kernel_size, *conv.stride, *conv.padding, str(device))
    if key not in _TAP_INDEX:
        _TAP_INDEX[key] = _build_tap_index(height, width, conv, device)
    return _TAP_INDEX[key]


# built as a normal tensor even when first asked for under inference_mode (prediction):
# training saves the index for backward, which an inference tensor cannot be
@torch.inference_mode(False)
def _build_tap_index(height: int, width: int, conv: nn.Conv2d, device: torch.device) -> tuple[torch.Tensor, int, int]:
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    ph, pw = conv.padding
    out_h = (height + 2 * ph - kh) // sh + 1
    out_w = (width + 2 * pw - kw) // sw + 1
    index = torch.full((height * width, out_h * out_w), kh * kw, dtype=torch.long)
    for a in range(out_h):
        for b in range(out_w):
            for i in range(kh):
                for j in range(kw):
                    row, col = a * sh + i - ph, b * sw + j - pw
                    if 0 <= row < height and 0 <= col < width:
                        index[row * width + col, a * out_w + b] = i * kw + j
    return index.to(device), out_h, out_w


class SmallMapDepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d`` with one filter per channel (groups = channels, zero padding, no
    dilation) that computes maps of at most ``MAX_POSITIONS`` positions on the CPU as a
    product with the gathered filter taps."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        if x.device.type != "cpu" or height * width > MAX_POSITIONS:
            return super().forward(x)
        index, out_h, out_w = _tap_index(height, width, self, x.device)
        taps = F.pad(self.weight.flatten(1), (0, 1))  # (C, kh * kw + 1), the last tap is zero
        if x.is_contiguous(memory_format=torch.channels_last):
            # channels-last in, channels-last out: the BatchNorm after it has a fast kernel
            # only for that layout (about 8 times slower in training on a contiguous 2 x 2 map)
            kernel = taps.t()[index]  # (P, Q, C)
            rows = x.permute(0, 2, 3, 1).reshape(batch, height * width, 1, channels)
            out = (rows * kernel.unsqueeze(0)).sum(1)  # (B, Q, C)
            if self.bias is not None:
                out = out + self.bias
            return out.reshape(batch, out_h, out_w, channels).permute(0, 3, 1, 2)
        kernel = taps[:, index]  # (C, P, Q)
        out = (x.reshape(batch, channels, height * width, 1) * kernel.unsqueeze(0)).sum(2)
        out = out.reshape(batch, channels, out_h, out_w)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        return out


class SmallMapPointwiseConv2d(nn.Conv2d):
    """``nn.Conv2d`` with a 1 x 1 kernel, stride 1, no padding and one group that computes
    maps of at most ``MAX_POSITIONS`` positions on the CPU as a matrix product."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        if x.device.type != "cpu" or height * width > MAX_POSITIONS:
            return super().forward(x)
        weight = self.weight.reshape(self.out_channels, channels)
        rows = x.permute(0, 2, 3, 1).reshape(batch * height * width, channels)
        return F.linear(rows, weight, self.bias).reshape(batch, height, width, -1).permute(0, 3, 1, 2)


def _is_depthwise(conv: nn.Conv2d) -> bool:
    return (conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
            and conv.dilation == (1, 1) and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple))


def _is_pointwise(conv: nn.Conv2d) -> bool:
    return conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.groups == 1 and conv.padding == (0, 0)


def use_small_map_kernels(model: nn.Module) -> int:
    """Give every plain depthwise and pointwise ``nn.Conv2d`` in ``model`` the small-map CPU
    path (in place; weights untouched); returns how many modules were switched."""
    switched = 0
    for module in model.modules():
        if type(module) is not nn.Conv2d:
            continue
        if _is_depthwise(module):
            module.__class__ = SmallMapDepthwiseConv2d
        elif _is_pointwise(module):
            module.__class__ = SmallMapPointwiseConv2d
        else:
            continue
        switched += 1
    return switched
