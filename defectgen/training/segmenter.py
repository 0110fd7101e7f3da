"""A tiny defect segmenter trained on the real images, used to label the generator's own defects.

Why: the discriminator sees image + mask, but with a few dozen defect masks covering ~1 % of the pixels,
a CPU-length run does not teach G where to put a mask (it learns "no mask", or noise). So before the GAN
starts we fit a small U-Net-lite S: image -> defect logit on the real training set (good images = empty
masks), and during training G's mask head is pulled (BCE) towards S's labels of G's *own* image (detached, so
G's image never chases S). The mask then marks whatever defect G drew, and stays empty where G drew none;
for type "good" the target is empty by definition. S is stored in the GAN checkpoint (`S.*`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from defectgen.training.augment import augment
from defectgen.training.report import iou


class _Block(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.LeakyReLU(0.2),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.LeakyReLU(0.2))


class Segmenter(nn.Module):
    """Two-level U-Net-lite: RGB in [-1, 1] [B,3,R,R] -> defect logit [B,1,R,R]."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.enc1 = _Block(3, width)
        self.enc2 = _Block(width, 2 * width)
        self.mid = _Block(2 * width, 2 * width)
        self.dec2 = _Block(4 * width, width)
        self.dec1 = _Block(2 * width, width)
        self.out = nn.Conv2d(width, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)  # [B, w, R, R]
        e2 = self.enc2(F.avg_pool2d(e1, 2))  # [B, 2w, R/2, R/2]
        m = self.mid(F.avg_pool2d(e2, 2))  # [B, 2w, R/4, R/4]
        d2 = self.dec2(torch.cat([F.interpolate(m, scale_factor=2.0), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0), e1], 1))
        return self.out(d1)


@dataclass(frozen=True)
class SegmenterFit:
    steps: int
    final_loss: float
    train_iou_defective: float  # mean IoU of S > 0.5 on the defective training images (no augmentation)
    train_fp_good: float  # mean predicted coverage on good training images (should be ~0)


def fit_segmenter(images: torch.Tensor, masks: torch.Tensor, types: torch.Tensor, *, steps: int, batch: int,
                  seed: int, policy: str = "translation,flip,flipv,color", width: int = 16,
                  lr: float = 2e-3) -> tuple[Segmenter, SegmenterFit]:
    """Fit S on (images, masks); half of each batch defective, half good. Deterministic given `seed`."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    S = Segmenter(width).to(images.device)
    opt = torch.optim.Adam(S.parameters(), lr=lr)
    bad = torch.nonzero(types != 0).flatten()
    good = torch.nonzero(types == 0).flatten()
    pools = [p for p in (bad, good) if p.numel()]
    # defects are ~1 % of the pixels: weight positives so S does not settle on "all background"
    pos = masks[bad].mean().item() if bad.numel() else 0.5
    pos_weight = torch.tensor(min(20.0, (1 - pos) / max(pos, 1e-4)) ** 0.5, device=images.device)
    loss = torch.zeros(())
    for _ in range(steps):
        idx = torch.cat([p[torch.randint(p.numel(), (batch // len(pools),), generator=gen)].to(images.device)
                         for p in pools])
        x, m = augment(images[idx], masks[idx], policy)
        loss = F.binary_cross_entropy_with_logits(S(x), m, pos_weight=pos_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    S.eval().requires_grad_(False)
    with torch.no_grad():
        ious = [iou((S(images[i:i + 64]) > 0).float(), masks[i:i + 64]) for i in range(0, len(images), 64)]
        pred = torch.cat([(S(images[i:i + 64]) > 0).float().flatten(1).mean(1) for i in range(0, len(images), 64)])
    all_iou = torch.cat(ious)
    fit = SegmenterFit(steps=steps, final_loss=round(loss.item(), 5),
                       train_iou_defective=round(float(all_iou[types != 0].mean()), 4) if bad.numel() else 0.0,
                       train_fp_good=round(float(pred[types == 0].mean()), 5) if good.numel() else 0.0)
    return S, fit
