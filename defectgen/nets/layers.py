"""The small building blocks of the StyleGAN2-lite nets: equalised linear/conv, modulated conv, noise, styled
conv and the RGB / mask output convs. Every conv goes through `ops` (export-ready, see `nets/stylegan.py`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from defectgen.nets import ops


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate (weights stored at unit scale, scaled at run time)."""

    def __init__(
        self, cin: int, cout: int, bias: bool = True, bias_init: float = 0.0, lr_mul: float = 1.0, act: bool = False
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin) / lr_mul)
        self.bias = nn.Parameter(torch.full((cout,), float(bias_init))) if bias else None
        self.scale = lr_mul / math.sqrt(cin)
        self.lr_mul = lr_mul
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        y = x @ (self.weight * self.scale).t()  # [B, Cout]; a MatMul in ONNX
        b = None if self.bias is None else self.bias * self.lr_mul
        if self.act:
            return ops.lrelu_gain(y, b)
        return y if b is None else y + b


class EqualConv2d(nn.Module):
    """Conv ('same' padding) with equalised learning rate and optional bias + leaky ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, bias: bool = True, act: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.scale = 1 / math.sqrt(cin * kernel * kernel)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        y = ops.conv2d(x, self.weight * self.scale, padding=self.weight.shape[-1] // 2)
        if self.act:
            return ops.lrelu_gain(y, self.bias)
        return y if self.bias is None else y + self.bias.reshape(1, -1, 1, 1)


class ModulatedConv2d(nn.Module):
    """StyleGAN2 modulated conv in the non-fused form: scale inputs by the style, plain conv, demodulate.

    The fused form (a per-sample weight as a grouped conv) makes the weight depend on the latent, so its
    backward needs a weight gradient; here the weight stays static and every latent path is elementwise.
    """

    def __init__(self, cin: int, cout: int, kernel: int, w_dim: int, demodulate: bool = True, up: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel))
        self.scale = 1 / math.sqrt(cin * kernel * kernel)
        self.affine = EqualLinear(w_dim, cin, bias_init=1.0)  # style starts at 1: an unmodulated conv
        self.demodulate = demodulate
        self.up = up
        if up:
            self.register_buffer("up_kernel", ops.fir_kernel(cin, gain=4.0), persistent=False)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        s = self.affine(w)  # [B, Cin]
        x = x * s[:, :, None, None]
        if self.up:
            x = ops.upsample2x(x, self.up_kernel)  # [B, Cin, 2H, 2W]
        weight = self.weight * self.scale
        x = ops.conv2d(x, weight, padding=weight.shape[-1] // 2)  # [B, Cout, H', W']
        if self.demodulate:
            d = torch.rsqrt(s.square() @ weight.square().sum((2, 3)).t() + ops.EPS)  # [B, Cout]
            x = x * d[:, :, None, None]
        return x


class NoiseInjection(nn.Module):
    """Per-pixel noise scaled by a learned strength; the 'const' noise is a fixed buffer saved with the model."""

    def __init__(self, res: int):
        super().__init__()
        self.strength = nn.Parameter(torch.zeros(()))
        self.register_buffer("noise", torch.randn(1, 1, res, res))

    def forward(self, x: Tensor, noise_mode: str = "const") -> Tensor:
        if noise_mode == "const":
            return x + self.strength * self.noise
        if noise_mode == "random":  # training only: the export path always uses 'const'
            return x + self.strength * torch.randn_like(x[:, :1])
        return x


class StyledConv(nn.Module):
    """Modulated 3x3 conv (+ optional 2x upsample before it) -> noise -> bias -> leaky ReLU."""

    def __init__(self, cin: int, cout: int, w_dim: int, res: int, up: bool = False, noise: bool = True):
        super().__init__()
        self.conv = ModulatedConv2d(cin, cout, 3, w_dim, up=up)
        self.noise = NoiseInjection(res) if noise else None
        self.bias = nn.Parameter(torch.zeros(cout))

    def forward(self, x: Tensor, w: Tensor, noise_mode: str = "const") -> Tensor:
        x = self.conv(x, w)
        if self.noise is not None:
            x = self.noise(x, noise_mode)
        return ops.lrelu_gain(x, self.bias)


class ToRGB(nn.Module):
    """Skip-architecture output head: modulated 1x1 conv (no demodulation) added to the upsampled skip."""

    out_channels = 3

    def __init__(self, cin: int, w_dim: int, up: bool = True):
        super().__init__()
        self.conv = ModulatedConv2d(cin, self.out_channels, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(self.out_channels))
        self.up = up
        if up:
            self.register_buffer("up_kernel", ops.fir_kernel(self.out_channels, gain=4.0), persistent=False)

    def forward(self, x: Tensor, w: Tensor, skip: Tensor | None = None) -> Tensor:
        y = self.conv(x, w) + self.bias.reshape(1, -1, 1, 1)
        if skip is not None:
            y = y + (ops.upsample2x(skip, self.up_kernel) if self.up else skip)
        return y


class ToMask(ToRGB):
    """Mask-logit head: its own conv, since slicing one 4-channel head would put a scatter in the backward."""

    out_channels = 1
