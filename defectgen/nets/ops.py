"""Export-ready primitives: convolutions whose backward, for frozen weights, is written as the adjoint op.

Why (docs/design.md "How a backward graph becomes ONNX"): the runtime runs `loss + d loss / d latent` as one ONNX
graph. Autograd's own conv backward is `aten.convolution_backward`, which the ONNX exporter cannot translate;
the adjoint of a conv is another conv (or a transposed conv), which it can. So when the weight is frozen
(inversion, export, the frozen D/G inside another model's training step) every conv in `nets/` goes through
the custom `autograd.Function`s below. When the weight is trained we use plain `F.conv2d`, so autograd
also produces weight gradients and double backward (R1, path length) keeps working.

Also here: the fixed-filter 2x resamplers (no `F.interpolate`: its backward is an `upsample_*_backward`
op) and `assert_shape`, a trace-safe shape check.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# Epsilon of every normalisation in nets/. Not StyleGAN's 1e-8: onnxscript's optimizer (run by
# torch.onnx.export(dynamo=True)) treats Add(x, c) with |c| <= 1e-8 as "x + 0" and deletes it (add_0_rule),
# so the exported pixel norm of an all-zero masked region became 0 * inf = NaN.
EPS = 1e-6


def assert_shape(t: Tensor, shape: Sequence[int | None], name: str = "tensor") -> None:
    """Raise ValueError naming the first dimension of `t` that differs from `shape` (None = any size).

    Trace-safe: it only compares sizes (no `int()` casts, no data-dependent branches), so it costs
    nothing in make_fx / torch.export graphs, where static sizes compare as plain ints.
    """
    if t.ndim != len(shape):
        msg = f"{name}: expected {len(shape)} dims {list(shape)}, got shape {list(t.shape)}"
        raise ValueError(msg)
    for i, (got, want) in enumerate(zip(t.shape, shape, strict=True)):
        if want is not None and got != want:
            msg = f"{name}: dim {i} should be {want}, got {got} (shape {list(t.shape)}, expected {list(shape)})"
            raise ValueError(msg)


def _adjoint_kernel(w: Tensor, groups: int) -> Tensor:
    """Kernel of the stride-1 adjoint conv: per group, swap in/out channels and flip spatially."""
    cout, cin_g, kh, kw = w.shape
    w = w.reshape(groups, cout // groups, cin_g, kh, kw).transpose(1, 2)  # [G, Cin/G, Cout/G, kh, kw]
    return w.reshape(groups * cin_g, cout // groups, kh, kw).flip(2, 3)


class _FrozenConv2d(torch.autograd.Function):
    """conv2d with a constant weight; backward = adjoint conv w.r.t. the input only."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, stride: int, padding: int, groups: int) -> Tensor:
        y = F.conv2d(x, w, stride=stride, padding=padding, groups=groups)
        ctx.save_for_backward(w)
        # output_padding of the stride-s adjoint: input rows the forward conv never reached (odd sizes).
        ctx.cfg = (stride, padding, groups, tuple(x.shape[-2:]), tuple(y.shape[-2:]))
        return y

    @staticmethod
    def backward(ctx, g: Tensor):
        (w,) = ctx.saved_tensors
        stride, padding, groups, (h, wd), (oh, ow) = ctx.cfg
        kh, kw = w.shape[-2:]
        if stride == 1:
            # conv with the flipped, transposed kernel: ONNX Runtime's Conv kernels beat ConvTranspose.
            gx = F.conv2d(g, _adjoint_kernel(w, groups), padding=(kh - 1 - padding, kw - 1 - padding), groups=groups)
        else:
            op = (h - ((oh - 1) * stride - 2 * padding + kh), wd - ((ow - 1) * stride - 2 * padding + kw))
            gx = F.conv_transpose2d(g, w, stride=stride, padding=padding, output_padding=op, groups=groups)
        return gx, None, None, None, None


class _FrozenConvTranspose2d(torch.autograd.Function):
    """conv_transpose2d with a constant weight; backward = the strided conv it is the transpose of."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, stride: int, padding: int, groups: int) -> Tensor:
        ctx.save_for_backward(w)
        ctx.cfg = (stride, padding, groups)
        return F.conv_transpose2d(x, w, stride=stride, padding=padding, groups=groups)

    @staticmethod
    def backward(ctx, g: Tensor):
        (w,) = ctx.saved_tensors
        stride, padding, groups = ctx.cfg
        return F.conv2d(g, w, stride=stride, padding=padding, groups=groups), None, None, None, None


def _check_padding(w: Tensor, padding: int) -> None:
    if padding > min(w.shape[-2:]) - 1:
        msg = f"padding {padding} > kernel size - 1 ({list(w.shape[-2:])}): the adjoint would need negative padding"
        raise ValueError(msg)


def conv2d(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: int = 1, padding: int = 0, groups: int = 1
) -> Tensor:
    """`F.conv2d` that is export-ready when `weight` is frozen (requires_grad False); identical values either way."""
    if weight.requires_grad:
        y = F.conv2d(x, weight, stride=stride, padding=padding, groups=groups)
    else:
        if stride == 1:
            _check_padding(weight, padding)
        y = _FrozenConv2d.apply(x, weight, stride, padding, groups)
    return y if bias is None else y + bias.reshape(1, -1, 1, 1)


def conv_transpose2d(x: Tensor, weight: Tensor, stride: int = 2, padding: int = 0, groups: int = 1) -> Tensor:
    """`F.conv_transpose2d` (no output_padding) that is export-ready when `weight` is frozen."""
    if weight.requires_grad:
        return F.conv_transpose2d(x, weight, stride=stride, padding=padding, groups=groups)
    return _FrozenConvTranspose2d.apply(x, weight, stride, padding, groups)


def fir_kernel(channels: int, taps: Sequence[float] = (1.0, 3.0, 3.0, 1.0), gain: float = 1.0) -> Tensor:
    """Separable 2D FIR as a depthwise weight [C, 1, k, k], normalised to sum `gain` (4 for 2x upsampling)."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)
    f = f / f.sum() * gain
    return f.expand(channels, 1, *f.shape).contiguous()


def upsample2x(x: Tensor, kernel: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, C, 2H, 2W]: zero-insertion + 4x4 FIR as one depthwise transposed conv.

    `kernel` is `fir_kernel(C, gain=4)` (a buffer, so never trained): the adjoint is a strided depthwise conv.
    """
    assert_shape(kernel, [x.shape[1], 1, 4, 4], "upsample kernel")
    return conv_transpose2d(x, kernel, stride=2, padding=1, groups=x.shape[1])


def downsample2x(x: Tensor, kernel: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, C, H/2, W/2]: 4x4 FIR blur + decimation as one depthwise stride-2 conv.

    `kernel` is `fir_kernel(C)` (gain 1); the adjoint is a depthwise transposed conv.
    """
    assert_shape(kernel, [x.shape[1], 1, 4, 4], "downsample kernel")
    return conv2d(x, kernel, stride=2, padding=1, groups=x.shape[1])


LRELU_SLOPE = 0.2
LRELU_GAIN = 2**0.5


class _LeakyReluGain(torch.autograd.Function):
    """gain * leaky_relu(x, 0.2) that saves its slope tensor, so the backward is one multiply.

    Why: autograd's leaky-ReLU backward exports as Greater + Mul + Mul + Where, and ONNX Runtime's CPU `Where`
    with two tensor branches is ~20x slower than a `Mul` on the same tensor (benchmarks/findings.md). The slope
    `s = Where(x > 0, gain, 0.2 gain)` (scalar branches, cheap) is made once in the forward; y = x * s and
    dy/dx = s are exact. Double backward (R1) still works: the backward is a plain differentiable product.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        slope = torch.where(x > 0, LRELU_GAIN, LRELU_SLOPE * LRELU_GAIN).to(x.dtype)
        ctx.save_for_backward(slope)
        return x * slope

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        (slope,) = ctx.saved_tensors
        return g * slope


def lrelu_gain(x: Tensor, bias: Tensor | None = None) -> Tensor:
    """Leaky ReLU(0.2) scaled by sqrt(2) so activations keep unit variance (StyleGAN2 `bias_act`)."""
    if bias is not None:
        x = x + bias.reshape(1, -1, *([1] * (x.ndim - 2)))
    return _LeakyReluGain.apply(x)


def pixel_norm(x: Tensor, dim: int = 1, eps: float = EPS) -> Tensor:
    """Scale each vector to unit mean square along `dim`."""
    return x * torch.rsqrt(x.square().mean(dim, keepdim=True) + eps)
