"""StyleGAN2-lite generator (image + defect-mask heads) and conditional discriminator, CPU-sized and export-ready.

Layout follows rosinality's model.py: tiny modules (`EqualLinear`, `ModulatedConv2d`, `StyledConv`, `ToRGB`,
`ToMask`, ...) composed into `MappingNetwork`, `SynthesisNetwork`, `Generator` and `Discriminator`.
Every conv goes through `ops.conv2d` / `ops.upsample2x` / `ops.downsample2x`, so with frozen weights the
backward graph holds only Conv/ConvTranspose and elementwise ops (docs/design.md "How a backward graph becomes
ONNX"); latents are indexed with `unbind`, image and mask have separate output convs, noise is a buffer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from defectgen.nets import ops
from defectgen.nets.layers import (
    EqualConv2d,
    EqualLinear,
    NoiseInjection,
    StyledConv,
    ToMask,
    ToRGB,
)
from defectgen.nets.ops import assert_shape

NOISE_MODES = ("const", "random", "none")


def _check_res(res: int, lowest: int = 16) -> None:
    if res < lowest or res > 1024 or res & (res - 1):
        msg = f"res must be a power of two in [{lowest}, 1024], got {res}"
        raise ValueError(msg)


def channels_at(res: int, channel_base: int, channel_max: int) -> int:
    """Channel schedule: halve the width each time the resolution doubles, capped at `channel_max`."""
    return max(1, min(channel_base // res, channel_max))


def num_ws_for(res: int) -> int:
    """Latent layers of a synthesis net of side `res`: 2 at 4x4, then 2 per doubling (rosinality `n_latent`)."""
    return 2 * int(math.log2(res)) - 2


@dataclass(frozen=True)
class GeneratorConfig:
    """Generator shape. `Generator(GeneratorConfig(**asdict(cfg)))` rebuilds the same architecture."""

    res: int = 64  # output side in px (power of two; 64/128/256 in use, 16/32 for tests)
    z_dim: int = 128  # input noise size
    w_dim: int = 128  # style size; also the w+ row size the runtime optimises
    n_types: int = 5  # "good" + defect types; the type enters as a float one-hot (B, T): MatMul, no Gather
    mapping_layers: int = 4  # StyleGAN2 uses 8; 4 suffices for a handful of classes of small industrial data
    mapping_lr_mul: float = 0.01  # equalised-lr multiplier: mapping learns 100x slower, keeps w well-behaved
    channel_base: int = 1024  # channels at side r = min(channel_base // r, channel_max): 64 @4-16, 32 @32, 16 @64
    channel_max: int = 64  # default sized for ~40 min CPU training at 64 px; raise both for a GPU run
    image_tanh: bool = False  # linear image output like StyleGAN2: tanh saturates on black/white parts, which
    #                           starves the inversion's background term of gradient; the runtime clips anyway
    noise: bool = True  # per-layer noise inputs (constant buffers in inversion/export, fresh in training)

    def __post_init__(self) -> None:
        _check_res(self.res)
        if self.n_types < 1 or self.mapping_layers < 1:
            msg = f"n_types and mapping_layers must be >= 1, got {self.n_types} and {self.mapping_layers}"
            raise ValueError(msg)

    def channels(self, r: int) -> int:
        return channels_at(r, self.channel_base, self.channel_max)

    @property
    def num_ws(self) -> int:
        return num_ws_for(self.res)


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Discriminator shape; its trunk doubles as the frozen perceptual feature net F of the inversion."""

    res: int = 64  # input side in px (same as the generator's)
    n_types: int = 5  # projection conditioning on the type one-hot
    channel_base: int = 1024  # same schedule as the generator: channels_at(r) = min(base // r, max)
    channel_max: int = 64
    mbstd_group: int = 4  # minibatch-std group size (0 = off); counters mode collapse on tiny data
    feature_levels: tuple[int, ...] = (4, 8)  # features(): trunk activations at res // k for each k (>= 4 px)

    def __post_init__(self) -> None:
        _check_res(self.res)
        object.__setattr__(self, "feature_levels", tuple(int(k) for k in self.feature_levels))  # JSON gives lists
        bad = [k for k in self.feature_levels if k < 2 or k & (k - 1) or self.res // k < 4]
        if bad or not self.feature_levels:
            msg = f"feature_levels must be powers of two >= 2 with res // k >= 4 (res={self.res}), got {bad or '()'}"
            raise ValueError(msg)

    def channels(self, r: int) -> int:
        return channels_at(r, self.channel_base, self.channel_max)


# --------------------------------------------------------------------------------------------- generator


class MappingNetwork(nn.Module):
    """(z [B, Z], type one-hot [B, T]) -> w [B, W]; keeps the running mean w per type for truncation/init."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = EqualLinear(cfg.n_types, cfg.w_dim, bias=False)  # one-hot @ table: a MatMul, no Gather
        dims = [cfg.z_dim + cfg.w_dim] + [cfg.w_dim] * cfg.mapping_layers
        self.layers = nn.Sequential(
            *[EqualLinear(a, b, lr_mul=cfg.mapping_lr_mul, act=True) for a, b in zip(dims[:-1], dims[1:], strict=True)]
        )
        self.register_buffer("w_avg", torch.zeros(cfg.n_types, cfg.w_dim))  # [T, W]

    def forward(self, z: Tensor, type_onehot: Tensor, truncation_psi: float = 1.0) -> Tensor:
        assert_shape(z, [None, self.cfg.z_dim], "z")
        assert_shape(type_onehot, [z.shape[0], self.cfg.n_types], "type_onehot")
        # normalise both halves so neither the noise nor the type dominates the first layer (StyleGAN2-ADA)
        x = torch.cat([ops.pixel_norm(z), ops.pixel_norm(self.embed(type_onehot))], 1)  # [B, Z + W]
        w = self.layers(x)  # [B, W]
        if truncation_psi != 1.0:
            w_avg = type_onehot @ self.w_avg  # [B, W]
            w = w_avg + truncation_psi * (w - w_avg)
        return w

    @torch.no_grad()
    def update_w_avg(self, w: Tensor, type_onehot: Tensor, beta: float = 0.995) -> None:
        """EMA of w per type over a batch; types absent from the batch keep their value."""
        counts = type_onehot.sum(0)  # [T]
        mean = (type_onehot.t() @ w) / counts.clamp(min=1)[:, None]  # [T, W]
        new = torch.lerp(mean, self.w_avg, beta)
        self.w_avg.copy_(torch.where(counts[:, None] > 0, new, self.w_avg))

    @torch.no_grad()
    def mean_latent(self, type_id: int, n: int = 4096, generator: torch.Generator | None = None) -> Tensor:
        """Mean w [1, W] of `n` fresh samples of type `type_id` (the buffer `w_avg` is the training-time EMA)."""
        if not 0 <= type_id < self.cfg.n_types:
            msg = f"type_id must be in [0, {self.cfg.n_types}), got {type_id}"
            raise ValueError(msg)
        device = self.w_avg.device
        z = torch.randn(n, self.cfg.z_dim, generator=generator, device=device)
        t = torch.zeros(n, self.cfg.n_types, device=device)
        t[:, type_id] = 1.0
        return self.forward(z, t).mean(0, keepdim=True)


class SynthesisBlock(nn.Module):
    """One resolution doubling: up-conv, conv, then the RGB and mask heads added to the upsampled skips."""

    def __init__(self, cin: int, cout: int, w_dim: int, res: int, noise: bool):
        super().__init__()
        self.conv0 = StyledConv(cin, cout, w_dim, res, up=True, noise=noise)
        self.conv1 = StyledConv(cout, cout, w_dim, res, noise=noise)
        self.to_rgb = ToRGB(cout, w_dim)
        self.to_mask = ToMask(cout, w_dim)

    def forward(self, x, img, mask, w0, w1, w2, noise_mode="const"):
        x = self.conv0(x, w0, noise_mode)  # [B, Cout, R, R]
        x = self.conv1(x, w1, noise_mode)
        return x, self.to_rgb(x, w2, img), self.to_mask(x, w2, mask)


def split_latent(latent: Tensor, num_ws: int, w_dim: int) -> list[Tensor] | tuple[Tensor, ...]:
    """One style per layer from w [B, W] (repeated) or w+ [B, L, W], shape-checked."""
    if latent.ndim == 2:
        assert_shape(latent, [None, w_dim], "w")
        return [latent] * num_ws
    assert_shape(latent, [None, num_ws, w_dim], "w+")
    return latent.unbind(1)  # not latent[:, i]: unbind's backward is a stack, slicing's a scatter


def check_noise_mode(noise_mode: str) -> None:
    if noise_mode not in NOISE_MODES:
        msg = f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}"
        raise ValueError(msg)


class SynthesisNetwork(nn.Module):
    """w [B, W] (same style for every layer) or w+ [B, L, W] -> (image [B, 3, R, R], mask logit [B, 1, R, R])."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.cfg = cfg
        c4 = cfg.channels(4)
        self.const = nn.Parameter(torch.randn(1, c4, 4, 4))
        self.conv1 = StyledConv(c4, c4, cfg.w_dim, 4, noise=cfg.noise)
        self.to_rgb1 = ToRGB(c4, cfg.w_dim, up=False)
        self.to_mask1 = ToMask(c4, cfg.w_dim, up=False)
        sides = [2**i for i in range(3, int(math.log2(cfg.res)) + 1)]
        self.blocks = nn.ModuleList(
            [SynthesisBlock(cfg.channels(r // 2), cfg.channels(r), cfg.w_dim, r, cfg.noise) for r in sides]
        )

    @property
    def num_ws(self) -> int:
        return self.cfg.num_ws

    def forward(self, latent: Tensor, noise_mode: str = "const") -> tuple[Tensor, Tensor]:
        check_noise_mode(noise_mode)
        ws = split_latent(latent, self.num_ws, self.cfg.w_dim)
        x = self.const.expand(latent.shape[0], -1, -1, -1)  # [B, C4, 4, 4]
        x = self.conv1(x, ws[0], noise_mode)
        img, mask = self.to_rgb1(x, ws[1]), self.to_mask1(x, ws[1])
        for i, block in enumerate(self.blocks):
            x, img, mask = block(x, img, mask, ws[2 * i + 1], ws[2 * i + 2], ws[2 * i + 3], noise_mode)
        return (torch.tanh(img) if self.cfg.image_tanh else img), mask

    @torch.no_grad()
    def make_noise(self, generator: torch.Generator | None = None) -> None:
        """Redraw the constant noise buffers (e.g. a different fixed noise for a new model)."""
        for m in self.modules():
            if isinstance(m, NoiseInjection):
                m.noise.copy_(torch.randn(m.noise.shape, generator=generator, device=m.noise.device))


class Generator(nn.Module):
    """Mapping + synthesis: (z [B, Z], type one-hot [B, T]) -> (image [B, 3, R, R], mask logit [B, 1, R, R])."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.cfg = cfg
        self.mapping = MappingNetwork(cfg)
        self.synthesis = SynthesisNetwork(cfg)

    @property
    def num_ws(self) -> int:
        return self.synthesis.num_ws

    @property
    def w_avg(self) -> Tensor:
        return self.mapping.w_avg  # [T, W]

    def forward(
        self, z: Tensor, type_onehot: Tensor, truncation_psi: float = 1.0, noise_mode: str = "const"
    ) -> tuple[Tensor, Tensor]:
        return self.synthesis(self.mapping(z, type_onehot, truncation_psi), noise_mode)

    def mean_latent(self, type_id: int, n: int = 4096) -> Tensor:
        return self.mapping.mean_latent(type_id, n)

    def make_noise(self, generator: torch.Generator | None = None) -> None:
        self.synthesis.make_noise(generator)


# --------------------------------------------------------------------------------------------- discriminator


class ResDownBlock(nn.Module):
    """Residual block at side r -> r/2: conv3x3, blur-decimate, conv3x3; skip = blur-decimate + 1x1 conv."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv0 = EqualConv2d(cin, cin, 3)
        self.conv1 = EqualConv2d(cin, cout, 3)
        self.skip = EqualConv2d(cin, cout, 1, bias=False, act=False)
        self.register_buffer("down_kernel", ops.fir_kernel(cin), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        y = ops.downsample2x(self.conv0(x), self.down_kernel)  # [B, Cin, r/2, r/2]
        y = self.conv1(y)  # [B, Cout, r/2, r/2]
        s = self.skip(ops.downsample2x(x, self.down_kernel))
        return (y + s) * 0.5**0.5  # keep unit variance of the sum


class FromImageMask(nn.Module):
    """First layer of D and the encoder: 1x1 convs on image and mask, summed (no channel concat/slicing)."""

    def __init__(self, cout: int):
        super().__init__()
        self.from_img = EqualConv2d(3, cout, 1, bias=False, act=False)
        self.from_mask = EqualConv2d(1, cout, 1, act=False)

    def forward(self, image: Tensor, mask: Tensor) -> Tensor:
        assert_shape(image, [None, 3, None, None], "image")
        assert_shape(mask, [image.shape[0], 1, image.shape[2], image.shape[3]], "mask")
        return ops.lrelu_gain(self.from_img(image) + self.from_mask(mask))


class MinibatchStd(nn.Module):
    """Append the std of features over groups of samples as one channel, so D can see lack of variety."""

    def __init__(self, group: int):
        super().__init__()
        self.group = group

    def forward(self, x: Tensor, group: int | None = None) -> Tensor:
        """`group` overrides the configured size (1: a constant channel, each sample judged on its own)."""
        b, c, h, w = x.shape
        size = self.group if group is None else group
        g = max(d for d in range(1, min(size, b) + 1) if b % d == 0)  # largest group dividing the batch
        y = x.reshape(g, -1, c, h, w)  # [G, B/G, C, H, W]
        y = (y.var(0, unbiased=False) + ops.EPS).sqrt().mean((1, 2, 3))  # [B/G]
        y = y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w)  # [B, 1, H, W]
        return torch.cat([x, y], 1)


class Discriminator(nn.Module):
    """(image [B, 3, R, R], mask [B, 1, R, R], type one-hot [B, T]) -> realness logit [B, 1].

    Conditioned by projection: logit = out(h) + <embed(type), h> / sqrt(C), with h the pooled trunk features.
    """

    def __init__(self, cfg: DiscriminatorConfig):
        super().__init__()
        self.cfg = cfg
        self.stem = FromImageMask(cfg.channels(cfg.res))
        sides = [2**i for i in range(int(math.log2(cfg.res)), 2, -1)]  # R, R/2, ..., 8
        self.blocks = nn.ModuleList([ResDownBlock(cfg.channels(r), cfg.channels(r // 2)) for r in sides])
        c4 = cfg.channels(4)
        self.mbstd = MinibatchStd(cfg.mbstd_group) if cfg.mbstd_group > 0 else None
        self.conv = EqualConv2d(c4 + (1 if self.mbstd else 0), c4, 3)
        self.fc = EqualLinear(c4 * 16, c4, act=True)
        self.out = EqualLinear(c4, 1)
        self.embed = EqualLinear(cfg.n_types, c4, bias=False)

    def trunk(self, image: Tensor, mask: Tensor, stop_side: int = 4) -> dict[int, Tensor]:
        """Activations {side: [B, C, side, side]} from side R down to `stop_side`."""
        x = self.stem(image, mask)
        acts = {self.cfg.res: x}
        for block in self.blocks:
            if x.shape[-1] <= stop_side:
                break
            x = block(x)
            acts[x.shape[-1]] = x
        return acts

    def forward(self, image: Tensor, mask: Tensor, type_onehot: Tensor, *, per_sample: bool = False) -> Tensor:
        """`per_sample`: minibatch-std over groups of one, so a sample's logit does not depend on the others in
        its batch (ranking candidates; measured on the patch D: rank correlation 0.97 with batched scoring).
        """
        assert_shape(image, [None, 3, self.cfg.res, self.cfg.res], "image")
        assert_shape(type_onehot, [image.shape[0], self.cfg.n_types], "type_onehot")
        x = self.trunk(image, mask)[4]  # [B, C4, 4, 4]
        if self.mbstd is not None:
            x = self.mbstd(x, group=1 if per_sample else None)
        h = self.fc(self.conv(x).flatten(1))  # [B, C4]
        proj = (self.embed(type_onehot) * h).sum(1, keepdim=True) / math.sqrt(h.shape[1])
        return self.out(h) + proj

    def features(self, image: Tensor, mask: Tensor) -> Tensor:
        """Perceptual features [B, N] for the inversion's defect term (the frozen F of docs/design.md).

        Trunk activations at sides R/k for k in `feature_levels` (default R/4 and R/8: texture and part
        scale rather than pixels, which the inversion's pixel terms already cover). Each is normalised to
        unit mean square over channels at every position (LPIPS-style: no channel dominates by magnitude),
        then weighted by sqrt(N / (levels * N_level)) so that in a mean over the flattened vector every level
        counts equally although R/4 has 4x the positions of R/8; flattened and concatenated. The trunk stops
        at the coarsest level, so the 4x4 head, minibatch-std and type projection are not part of F.
        """
        assert_shape(image, [None, 3, self.cfg.res, self.cfg.res], "image")
        sides = [self.cfg.res // k for k in self.cfg.feature_levels]
        acts = self.trunk(image, mask, stop_side=min(sides))
        sizes = [acts[s].shape[1] * s * s for s in sides]  # N_level
        feats = [
            (ops.pixel_norm(acts[s]) * math.sqrt(sum(sizes) / (len(sides) * n))).flatten(1)  # [B, N_level]
            for s, n in zip(sides, sizes, strict=True)
        ]
        return torch.cat(feats, 1)  # [B, N]


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (buffers excluded)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
