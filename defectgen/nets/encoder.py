"""Domain-guided encoder (idinvert): (image, mask) -> w+, starting from the generator's mean w."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from defectgen.nets.layers import EqualLinear
from defectgen.nets.ops import assert_shape
from defectgen.nets.stylegan import (
    FromImageMask,
    GeneratorConfig,
    ResDownBlock,
    _check_res,
    channels_at,
    num_ws_for,
)


@dataclass(frozen=True)
class EncoderConfig:
    """Encoder shape; `EncoderConfig.from_generator(gcfg)` matches a generator's latent layout."""

    res: int = 64  # input side in px (the generator's)
    w_dim: int = 128  # w+ row size (the generator's)
    num_ws: int = 10  # w+ rows L (the generator's num_ws: 2 * log2(res) - 2)
    channel_base: int = 1024  # channels at side r = min(channel_base // r, channel_max), as in D
    channel_max: int = 64

    def __post_init__(self) -> None:
        _check_res(self.res)
        if self.num_ws < 1 or self.w_dim < 1:
            msg = f"num_ws and w_dim must be >= 1, got {self.num_ws} and {self.w_dim}"
            raise ValueError(msg)

    @classmethod
    def from_generator(cls, gcfg: GeneratorConfig, **overrides) -> EncoderConfig:
        kw = {"res": gcfg.res, "w_dim": gcfg.w_dim, "num_ws": num_ws_for(gcfg.res)}
        return cls(**{**kw, **overrides})

    def channels(self, r: int) -> int:
        return channels_at(r, self.channel_base, self.channel_max)


class Encoder(nn.Module):
    """(image [B, 3, R, R], mask [B, 1, R, R]) -> w+ [B, L, W] = w_avg + predicted offset.

    Residual conv trunk down to 4x4, then one linear head. The head starts at zero, so an untrained encoder
    returns `w_avg` (set by the trainer from the generator's mapping) and training learns offsets from the
    centre of the generator's domain, the idinvert recipe for codes that stay in-domain.
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.stem = FromImageMask(cfg.channels(cfg.res))
        sides = [2**i for i in range(int(math.log2(cfg.res)), 2, -1)]  # R, R/2, ..., 8
        self.blocks = nn.Sequential(*[ResDownBlock(cfg.channels(r), cfg.channels(r // 2)) for r in sides])
        self.head = EqualLinear(cfg.channels(4) * 16, cfg.num_ws * cfg.w_dim)
        nn.init.zeros_(self.head.weight)
        self.register_buffer("w_avg", torch.zeros(cfg.w_dim))  # [W]

    @property
    def num_ws(self) -> int:
        return self.cfg.num_ws

    def forward(self, image: Tensor, mask: Tensor) -> Tensor:
        assert_shape(image, [None, 3, self.cfg.res, self.cfg.res], "image")
        x = self.blocks(self.stem(image, mask))  # [B, C4, 4, 4]
        offset = self.head(x.flatten(1)).reshape(-1, self.cfg.num_ws, self.cfg.w_dim)  # [B, L, W]
        return self.w_avg + offset

    @torch.no_grad()
    def set_w_avg(self, w_avg: Tensor) -> None:
        """Set the starting code from the generator: w [W], or per-type w_avg [T, W] (averaged over types)."""
        w = w_avg.reshape(-1, self.cfg.w_dim).mean(0)
        self.w_avg.copy_(w)
