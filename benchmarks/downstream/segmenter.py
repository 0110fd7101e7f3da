"""The one small U-Net segmenter every source is judged with: same seed, same budget, same data besides the
synthetic defects, so differences in the table come from the defects alone.

Trained on good images (all-zero masks) plus one source's synthetic defects, half of each batch each, with
flips and 90-degree turns; loss = BCE + soft Dice (defect pixels are a few percent of an image, Dice keeps
the rare class from being ignored). CPU-sized: 4 levels, 16 channels at the top, 128 px.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class SegConfig:
    res: int = 128  # side of the images the segmenter sees (px)
    width: int = 16  # channels of the first level; doubled per level
    depth: int = 4  # resolution levels (3 poolings)
    steps: int = 600  # optimiser steps: the fixed budget, identical for every source
    batch: int = 16  # images per step
    defect_share: float = 0.5  # share of synthetic defective images per batch (the rest are good)
    lr: float = 2e-3  # Adam, cosine-decayed to 5 % over `steps`
    seed: int = 0  # torch and sampling seed
    threads: int = 2  # torch intra-op threads


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """Plain U-Net: conv blocks, max-pool down, bilinear up + skip concat, 1-channel logit out."""

    def __init__(self, width: int = 16, depth: int = 4) -> None:
        super().__init__()
        chans = [width * 2**i for i in range(depth)]
        self.down = nn.ModuleList([_block(3 if i == 0 else chans[i - 1], c) for i, c in enumerate(chans)])
        self.up = nn.ModuleList([_block(chans[i] + chans[i + 1], chans[i]) for i in range(depth - 1)])
        self.head = nn.Conv2d(chans[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for i in reversed(range(len(self.up))):
            x = F.interpolate(x, size=skips[i].shape[-2:], mode="bilinear", align_corners=False)
            x = self.up[i](torch.cat([skips[i], x], 1))
        return self.head(x)  # [N, 1, H, W] logits


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float() / 127.5 - 1.0


def _augment(x: np.ndarray, m: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The same random flip / 90-degree turn for an image batch (N,H,W,3) and its masks (N,H,W)."""
    k = int(rng.integers(4))
    x, m = np.rot90(x, k, axes=(1, 2)), np.rot90(m, k, axes=(1, 2))
    if rng.integers(2):
        x, m = x[:, :, ::-1], m[:, :, ::-1]
    return x, m


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    dice = 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    return bce + dice


@dataclass
class TrainLog:
    seconds: float
    final_loss: float
    losses: list[float]
    config: dict[str, object]


def train_segmenter(good: np.ndarray, synth: np.ndarray, synth_masks: np.ndarray, cfg: SegConfig,
                    log_every: int = 100) -> tuple[UNet, TrainLog]:
    """Train a fresh U-Net on good (N,R,R,3) uint8 plus synthetic defects with {0,1} masks (M,R,R).

    Prints a progress line to stderr every `log_every` steps (0 = never).
    """
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng([cfg.seed, 8])
    net = UNet(cfg.width, cfg.depth)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps, eta_min=cfg.lr * 0.05)
    n_def = max(1, min(cfg.batch, round(cfg.batch * cfg.defect_share)))
    zeros = np.zeros((cfg.batch - n_def, *good.shape[1:3]), np.uint8)
    losses: list[float] = []
    t0 = time.perf_counter()
    net.train()
    for step in range(1, cfg.steps + 1):
        i = rng.integers(len(synth), size=n_def)
        j = rng.integers(len(good), size=cfg.batch - n_def)
        x, m = _augment(np.concatenate([synth[i], good[j]]), np.concatenate([synth_masks[i], zeros]), rng)
        logits = net(_to_tensor(x))
        loss = _loss(logits, torch.from_numpy(np.ascontiguousarray(m)).float()[:, None])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if log_every and step % log_every == 0:
            rate = (time.perf_counter() - t0) / step
            print(f"  segmenter step {step}/{cfg.steps}: loss {np.mean(losses[-log_every:]):.4f}, {rate:.2f} s/step",
                  file=sys.stderr, flush=True)
    seconds = time.perf_counter() - t0
    tail = losses[-max(1, len(losses) // 10):]
    return net, TrainLog(seconds=seconds, final_loss=float(np.mean(tail)), losses=losses, config=asdict(cfg))


@torch.no_grad()
def predict(net: UNet, images: np.ndarray, batch: int = 16) -> np.ndarray:
    """Pixel anomaly maps (N, R, R) in [0, 1] for uint8 images (N, R, R, 3)."""
    net.eval()
    out = [torch.sigmoid(net(_to_tensor(images[k:k + batch])))[:, 0].numpy() for k in range(0, len(images), batch)]
    return np.concatenate(out).astype(np.float32)
