"""Per-phase losses (NVlabs `loss.py` style): G main, D main + lazy R1, and the idinvert encoder losses.

Each `accumulate_*` computes one phase's loss, calls backward, and returns detached floats for the log; the
trainer owns the optimiser steps, gradient syncing and which nets are frozen.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from defectgen.nets.stylegan import Discriminator, Generator
from defectgen.training.augment import augment


def onehot(types: torch.Tensor, n: int) -> torch.Tensor:
    return F.one_hot(types, n).to(torch.float32)


def mask_for_d(logit: torch.Tensor, ste: bool) -> torch.Tensor:
    """The mask D sees of a generated sample: sigmoid, or (ste) its 0.5 threshold with the sigmoid's gradient."""
    soft = torch.sigmoid(logit)
    if not ste:
        return soft
    return (logit > 0).to(soft.dtype) + soft - soft.detach()


def d_loss(D: torch.nn.Module, fake: torch.Tensor, real_img: torch.Tensor, real_mask: torch.Tensor,
           c_real: torch.Tensor, policy: object, *, do_r1: bool, r1_gamma: float,
           r1_interval: int, ada_p: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """D's non-saturating loss given its logits on fakes, plus lazy R1 on the reals when `do_r1`.

    R1 is taken w.r.t. the *augmented* reals: grid_sample has no double backward, and the penalty is about D's
    smoothness on what it actually sees; it is scaled by the interval (lazy regularisation).
    """
    if do_r1:
        with torch.no_grad():
            aug_img, aug_mask = augment(real_img, real_mask, policy, ada_p)
        aug_img.requires_grad_(True)
        aug_mask.requires_grad_(True)
        real = D(aug_img, aug_mask, c_real)
    else:
        real = D(*augment(real_img, real_mask, policy, ada_p), c_real)
    loss = F.softplus(fake).mean() + F.softplus(-real).mean()
    stats = {"loss_D": loss.item(), "D_real": real.mean().item(), "D_fake": fake.mean().item(),
             "D_real_sign": real.sign().mean().item()}
    if do_r1:
        g_img, g_mask = torch.autograd.grad(real.sum(), [aug_img, aug_mask], create_graph=True)
        penalty = g_img.square().sum([1, 2, 3]) + g_mask.square().sum([1, 2, 3])
        loss = loss + penalty.mean() * (r1_gamma / 2) * r1_interval
        stats["loss_R1"] = penalty.mean().item()
    return loss, stats


class GanLoss:
    """Non-saturating logistic GAN loss with lazy R1, DiffAugment on everything D sees.

    Two mask devices, both because defect masks cover ~1 % of an image and there are a few dozen of them:

    - `mask_ste`: D sees G's mask *thresholded at 0.5* (the mask the runtime reports), with the sigmoid's
      gradient passed straight through. Real masks are exactly binary, so a soft mask would let D win on
      "not binary" alone, and G would answer by driving every logit to -inf: no mask at all. Binary inputs
      leave D only the questions that matter: is there a mask, is it defect-shaped, does it sit on the defect.
    - `mask_seg` (opt-in, see segmenter.py): BCE towards a real-data segmenter's labels of G's own image, so
      the mask marks the defect G actually drew.
    - `mask_stat`: a first-moment match of how much mask each type draws: per type present in the batch,
      (log((c_fake + s) / (c_real + s)))² with c = mean hard coverage (straight-through) and s = the mean real
      coverage over defect types. It keeps the mask head from dying early (no mask → no gradient) and says
      only *how much* mask, never where; log-ratio keeps it bounded while G still draws noise.
    """

    def __init__(self, G: Generator, D: Discriminator, *, policy: str, r1_gamma: float, r1_interval: int,
                 mask_stat: float = 0.0, real_coverage: torch.Tensor | None = None, mask_ste: bool = False,
                 segmenter: torch.nn.Module | None = None, mask_seg: float = 0.0) -> None:
        self.G, self.D = G, D
        self.policy = policy
        self.r1_gamma, self.r1_interval = r1_gamma, r1_interval
        self.n_types = G.cfg.n_types
        self.mask_ste = mask_ste
        self.segmenter, self.mask_seg = segmenter, (mask_seg if segmenter is not None else 0.0)
        self.mask_stat = mask_stat if real_coverage is not None else 0.0
        if real_coverage is not None:
            defects = real_coverage[1:]
            self.coverage = real_coverage  # [T]
            self.coverage_scale = float(defects.mean()) if defects.numel() and defects.mean() > 0 else 0.01

    def fake_mask(self, logit: torch.Tensor) -> torch.Tensor:
        return mask_for_d(logit, self.mask_ste)

    def generate(self, z: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image, mask logit, w) with fresh noise, as in training."""
        w = self.G.mapping(z, c)
        img, logit = self.G.synthesis(w, noise_mode="random")
        return img, logit, w

    def d_logits(self, img: torch.Tensor, mask01: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        img, mask01 = augment(img, mask01, self.policy)
        return self.D(img, mask01, c)

    def coverage_loss(self, mask01: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Per-type squared log-ratio of the batch's mean mask coverage vs the real data's."""
        cov = mask01.flatten(1).mean(1)  # [B]
        counts = c.sum(0)  # [T]
        per_type = (c.t() @ cov) / counts.clamp(min=1)  # [T]
        s = self.coverage_scale
        err = torch.log((per_type + s) / (self.coverage.to(cov.device) + s)).square()
        return (err * (counts > 0)).sum() / (counts > 0).sum().clamp(min=1)

    def seg_loss(self, img: torch.Tensor, logit: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        """BCE of G's mask logit vs the segmenter's label of G's own (detached) image; empty for type good."""
        with torch.no_grad():
            defect = (types != 0).to(logit.dtype).reshape(-1, 1, 1, 1)
            target = (self.segmenter(img.detach()) > 0).to(logit.dtype) * defect  # [B, 1, R, R]
        return F.binary_cross_entropy_with_logits(logit, target)

    def accumulate_g(self, z: torch.Tensor, types: torch.Tensor) -> tuple[dict[str, float], torch.Tensor]:
        """G main phase: softplus(-D(G(z))). Returns log values and the batch's w (for the w_avg EMA)."""
        c = onehot(types, self.n_types)
        img, logit, w = self.generate(z, c)
        mask01 = self.fake_mask(logit)
        loss = F.softplus(-self.d_logits(img, mask01, c)).mean()
        stats = {"loss_G": loss.item()}
        if self.mask_stat > 0:
            cov = self.coverage_loss(mask_for_d(logit, ste=True), c)
            loss = loss + self.mask_stat * cov
            stats["loss_G_cov"] = cov.item()
        if self.mask_seg > 0:
            seg = self.seg_loss(img, logit, types)
            loss = loss + self.mask_seg * seg
            stats["loss_G_seg"] = seg.item()
        loss.backward()
        return stats, w.detach()

    def accumulate_d(self, z: torch.Tensor, fake_types: torch.Tensor, real_img: torch.Tensor,
                     real_mask: torch.Tensor, real_types: torch.Tensor, do_r1: bool) -> dict[str, float]:
        """D main phase (+ R1 on the same real forward when `do_r1`, scaled by the interval: lazy R1)."""
        with torch.no_grad():
            fake_img, fake_logit, _ = self.generate(z, onehot(fake_types, self.n_types))
        fake = self.d_logits(fake_img, self.fake_mask(fake_logit), onehot(fake_types, self.n_types))
        loss, stats = d_loss(self.D, fake, real_img, real_mask, onehot(real_types, self.n_types), self.policy,
                             do_r1=do_r1, r1_gamma=self.r1_gamma, r1_interval=self.r1_interval)
        loss.backward()
        return stats
