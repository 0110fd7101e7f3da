"""Patch generators and their discriminator: P x P px windows at the data's native pixel scale.

Patch mode (docs/design.md "Resolution and patch mode"): G works on P x P windows at the data's native pixel scale
and draws only the defect: a colour layer and an alpha/mask logit, composited over the *real* good window,
which G also sees at every scale (FIR-downsampled, added as features) so the defect's colours follow the
surface under it. D judges (composite, mask) against real defective windows, so training needs no paired
good/defective images.

Built from `nets/stylegan.py`'s modules (mapping with per-type `w_avg`, modulated convs in the non-fused
form, const noise, separate colour and mask heads, `unbind` for w+), so with frozen weights the backward of
an inversion objective holds only Conv/ConvTranspose and elementwise ops, like the whole-part G.

The other design, a *full* patch G (`layered=False`), draws the whole window, surface and defect, and never sees
the good window: an inversion's background term must make it reproduce the part. It exists to measure the
layered design against (docs/design.md "Resolution and patch mode").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from defectgen.nets import ops
from defectgen.nets.layers import EqualConv2d, StyledConv, ToMask, ToRGB
from defectgen.nets.ops import assert_shape
from defectgen.nets.stylegan import (
    Discriminator,
    DiscriminatorConfig,
    MappingNetwork,
    channels_at,
    check_noise_mode,
    num_ws_for,
    split_latent,
)


def _check_window(window: int) -> None:
    if window < 16 or window > 256 or window & (window - 1):
        msg = f"window must be a power of two in [16, 256], got {window}"
        raise ValueError(msg)


@dataclass(frozen=True)
class PatchGeneratorConfig:
    """Layered patch G shape. Field names shared with `GeneratorConfig` let it reuse `MappingNetwork`."""

    window: int = 32  # P: side of the window in model px (power of two, 16..256)
    z_dim: int = 64  # input noise size
    w_dim: int = 64  # style size; also the w+ row size an inversion optimises
    n_types: int = 4  # defect types only (no "good": G always draws a defect); float one-hot, a MatMul
    mapping_layers: int = 4
    mapping_lr_mul: float = 0.01  # equalised-lr multiplier of the mapping (StyleGAN2)
    channel_base: int = 1024  # channels at side r = min(base // r, max): 128 @4-8, 64 @16, 32 @32, 16 @64
    channel_max: int = 128
    noise: bool = False  # per-layer noise off: with the hard alpha, per-pixel noise flipped logits near 0 into
    #                      speckled masks (measured: speckle at 150 steps with noise, solid shapes without)
    layered: bool = True  # True: a defect layer over the real good window; False: a full G draws the window
    colour_tanh: bool = True  # False: a linear colour head as StyleGAN2's ToRGB (unbounded). Both were tried
    #                           against the tanh's black hole cores; neither the linear nor the wide head
    #                           (below) brought them off black: D does not pull them back, gradient or not
    colour_bound: float = 1.0  # the tanh head is bound * tanh(x / bound): above 1 the data range [-1, 1] sits
    #                            on the tanh's steep part (gradient 0.31 at black with 1.2, not ~0), while the
    #                            overshoot stays bounded (a linear head drew colours up to 4.9)

    def __post_init__(self) -> None:
        _check_window(self.window)
        if self.colour_bound < 1.0:
            msg = f"colour_bound must be >= 1 (the head must reach the data range [-1, 1]), got {self.colour_bound}"
            raise ValueError(msg)
        if self.n_types < 1 or self.mapping_layers < 1:
            msg = f"n_types and mapping_layers must be >= 1, got {self.n_types} and {self.mapping_layers}"
            raise ValueError(msg)

    @property
    def res(self) -> int:
        return self.window

    def channels(self, r: int) -> int:
        return channels_at(r, self.channel_base, self.channel_max)

    @property
    def num_ws(self) -> int:
        return num_ws_for(self.window)


@dataclass(frozen=True)
class PatchDiscriminatorConfig(DiscriminatorConfig):
    """Patch D shape: the whole-part D's fields (`res` = the window P) with patch-sized defaults."""

    res: int = 32
    n_types: int = 4  # defect types only
    channel_base: int = 1024
    channel_max: int = 128
    feature_levels: tuple[int, ...] = (2, 4)  # features(): P/2 and P/4; defects are a few px wide


# --------------------------------------------------------------------------------------------- compositing


def hard_alpha(mask_logit: Tensor) -> Tensor:
    """Alpha thresholded at 0.5 with the sigmoid's gradient (straight-through): binary, as real masks are."""
    soft = torch.sigmoid(mask_logit)
    return (mask_logit > 0).to(soft.dtype) + (soft - soft.detach())  # parenthesised: exactly 0 or 1


def composite(good: Tensor, colour: Tensor, mask_logit: Tensor, hard: bool = False,
              layered: bool = True) -> tuple[Tensor, Tensor]:
    """(a * colour + (1 - a) * good, a) with a = sigmoid(mask_logit), or its straight-through threshold.

    One function for training, sampling and the exported graphs, so what D judged is what the runtime pastes.
    `hard=False` keeps a smooth alpha for inversion objectives; alpha 0 returns `good` exactly. A full G
    (`layered=False`) drew the whole window: its image is `colour` itself, `good` plays no part.
    """
    assert_shape(good, [None, 3, None, None], "good")
    assert_shape(mask_logit, [good.shape[0], 1, good.shape[2], good.shape[3]], "mask_logit")
    a = hard_alpha(mask_logit) if hard else torch.sigmoid(mask_logit)  # [B, 1, P, P]
    return (good + a * (colour - good) if layered else colour), a


# --------------------------------------------------------------------------------------------- generator


class PatchSynthesisBlock(nn.Module):
    """One doubling: up-conv, + good-window features at the new side, conv, colour and mask heads."""

    def __init__(self, cin: int, cout: int, w_dim: int, res: int, noise: bool, layered: bool = True):
        super().__init__()
        self.conv0 = StyledConv(cin, cout, w_dim, res, up=True, noise=noise)
        self.from_good = EqualConv2d(3, cout, 1, act=False) if layered else None
        self.conv1 = StyledConv(cout, cout, w_dim, res, noise=noise)
        self.to_rgb = ToRGB(cout, w_dim)
        self.to_mask = ToMask(cout, w_dim)

    def forward(self, x, good, rgb, mask, w0, w1, w2, noise_mode="const"):
        x = self.conv0(x, w0, noise_mode)  # [B, Cout, R, R]
        if self.from_good is not None:
            x = x + self.from_good(good)
        x = self.conv1(x, w1, noise_mode)
        return x, self.to_rgb(x, w2, rgb), self.to_mask(x, w2, mask)


class PatchSynthesis(nn.Module):
    """(w+ [B, L, W] or w [B, W], good window [B, 3, P, P]) -> (colour [B, 3, P, P], mask logit).

    The colour is in [-1, 1] with the tanh head, in [-bound, bound] with the wide one; the linear head's may
    overshoot it without bound (the runtime clips).
    """

    def __init__(self, cfg: PatchGeneratorConfig):
        super().__init__()
        self.cfg = cfg
        c4 = cfg.channels(4)
        self.const = nn.Parameter(torch.randn(1, c4, 4, 4))
        self.from_good = EqualConv2d(3, c4, 1, act=False) if cfg.layered else None
        self.conv1 = StyledConv(c4, c4, cfg.w_dim, 4, noise=cfg.noise)
        self.to_rgb1 = ToRGB(c4, cfg.w_dim, up=False)
        self.to_mask1 = ToMask(c4, cfg.w_dim, up=False)
        sides = [2**i for i in range(3, int(math.log2(cfg.window)) + 1)]
        self.blocks = nn.ModuleList(
            [PatchSynthesisBlock(cfg.channels(r // 2), cfg.channels(r), cfg.w_dim, r, cfg.noise, cfg.layered)
             for r in sides]
        )
        self.register_buffer("down_kernel", ops.fir_kernel(3), persistent=False)

    @property
    def num_ws(self) -> int:
        return self.cfg.num_ws

    def pyramid(self, good: Tensor) -> list[Tensor]:
        """The good window at sides 4, 8, ..., P (FIR decimation: a conv, no F.interpolate)."""
        levels = [good]
        while levels[-1].shape[-1] > 4:
            levels.append(ops.downsample2x(levels[-1], self.down_kernel))
        return levels[::-1]

    def forward(self, latent: Tensor, good: Tensor, noise_mode: str = "const") -> tuple[Tensor, Tensor]:
        rgb, mask = self.raw(latent, good, noise_mode)
        return self.colour_head(rgb), mask

    def raw(self, latent: Tensor, good: Tensor, noise_mode: str = "const") -> tuple[Tensor, Tensor]:
        """(the colour head's input, mask logit): where a colour penalty still has a gradient at saturation."""
        check_noise_mode(noise_mode)
        p = self.cfg.window
        assert_shape(good, [latent.shape[0], 3, p, p], "good")
        ws = split_latent(latent, self.num_ws, self.cfg.w_dim)
        goods = self.pyramid(good) if self.cfg.layered else [None] * (len(self.blocks) + 1)  # a full G: unseen
        x = self.const.expand(latent.shape[0], -1, -1, -1)  # [B, C4, 4, 4]
        if self.from_good is not None:
            x = x + self.from_good(goods[0])
        x = self.conv1(x, ws[0], noise_mode)
        rgb, mask = self.to_rgb1(x, ws[1]), self.to_mask1(x, ws[1])
        for i, block in enumerate(self.blocks):
            x, rgb, mask = block(x, goods[i + 1], rgb, mask, ws[2 * i + 1], ws[2 * i + 2], ws[2 * i + 3],
                                 noise_mode)
        return rgb, mask

    def colour_head(self, rgb: Tensor) -> Tensor:
        """The summed ToRGB output to G's colour: bound * tanh(x / bound), or x itself for the linear head."""
        if not self.cfg.colour_tanh:
            return rgb
        bound = self.cfg.colour_bound
        return torch.tanh(rgb) if bound == 1.0 else bound * torch.tanh(rgb / bound)  # the default: one graph op

    def colour_head_input(self, colour: Tensor, margin: float = 1e-3) -> Tensor:
        """The head's input that draws `colour` (its inverse; colours at the bound map to +-atanh(1 - margin))."""
        if not self.cfg.colour_tanh:
            return colour
        bound = self.cfg.colour_bound
        return bound * torch.atanh((colour / bound).clamp(-1 + margin, 1 - margin))


class PatchGenerator(nn.Module):
    """Mapping + patch synthesis; `forward` returns (composite, alpha, colour, mask logit)."""

    def __init__(self, cfg: PatchGeneratorConfig):
        super().__init__()
        self.cfg = cfg
        self.mapping = MappingNetwork(cfg)  # type: ignore[arg-type]  # same field names as GeneratorConfig
        self.synthesis = PatchSynthesis(cfg)

    @property
    def num_ws(self) -> int:
        return self.synthesis.num_ws

    @property
    def w_avg(self) -> Tensor:
        return self.mapping.w_avg  # [T, W]

    def wplus(self, z: Tensor, type_onehot: Tensor, truncation_psi: float = 1.0) -> Tensor:
        """W broadcast to every layer: [B, L, W]."""
        w = self.mapping(z, type_onehot, truncation_psi)
        return w[:, None].expand(-1, self.num_ws, -1)

    def forward(self, z: Tensor, type_onehot: Tensor, good: Tensor, *, hard: bool = True,
                truncation_psi: float = 1.0, noise_mode: str = "const") -> tuple[Tensor, Tensor, Tensor, Tensor]:
        colour, logit = self.synthesis(self.mapping(z, type_onehot, truncation_psi), good, noise_mode)
        image, alpha = self.compose(good, colour, logit, hard=hard)
        return image, alpha, colour, logit

    def compose(self, good: Tensor, colour: Tensor, mask_logit: Tensor, hard: bool = False) -> tuple[Tensor, Tensor]:
        """`composite` for this G's design (layered or full)."""
        return composite(good, colour, mask_logit, hard=hard, layered=self.cfg.layered)

    def mean_latent(self, type_id: int, n: int = 4096) -> Tensor:
        return self.mapping.mean_latent(type_id, n)


# --------------------------------------------------------------------------------------------- discriminator


class PatchDiscriminator(Discriminator):
    """(composite [B, 3, P, P], mask [B, 1, P, P], type one-hot) -> logit; projection on the defect type.

    The whole-part D's architecture at side P. `features(image, mask)` (normalised, flattened trunk levels)
    is the frozen feature net an inversion's appearance term and diversity metrics use; `feature_map` gives
    one raw trunk level.
    """

    def __init__(self, cfg: PatchDiscriminatorConfig):
        super().__init__(cfg)

    def feature_map(self, image: Tensor, mask: Tensor, side: int | None = None) -> Tensor:
        """Trunk activation [B, C, s, s] at side `s` (default P / feature_levels[0])."""
        side = side or self.cfg.res // self.cfg.feature_levels[0]
        acts = self.trunk(image, mask, stop_side=side)
        if side not in acts:
            msg = f"no trunk level at side {side}; sides are {sorted(acts)}"
            raise ValueError(msg)
        return acts[side]
