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


class GanLoss:
    """Non-saturating logistic GAN loss with lazy R1, DiffAugment on everything D sees."""

    def __init__(self, G: Generator, D: Discriminator, *, policy: str, r1_gamma: float, r1_interval: int,
                 mask_loss: float = 0.0) -> None:
        self.G, self.D = G, D
        self.policy = policy
        self.r1_gamma, self.r1_interval = r1_gamma, r1_interval
        self.mask_loss = mask_loss
        self.n_types = G.cfg.n_types

    def generate(self, z: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image, mask logit, w) with fresh noise, as in training."""
        w = self.G.mapping(z, c)
        img, logit = self.G.synthesis(w, noise_mode="random")
        return img, logit, w

    def d_logits(self, img: torch.Tensor, mask01: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        img, mask01 = augment(img, mask01, self.policy)
        return self.D(img, mask01, c)

    def accumulate_g(self, z: torch.Tensor, types: torch.Tensor) -> tuple[dict[str, float], torch.Tensor]:
        """G main phase: softplus(-D(G(z))). Returns log values and the batch's w (for the w_avg EMA)."""
        c = onehot(types, self.n_types)
        img, logit, w = self.generate(z, c)
        loss = F.softplus(-self.d_logits(img, torch.sigmoid(logit), c)).mean()
        stats = {"loss_G": loss.item()}
        if self.mask_loss > 0:
            # optional push of the mask logits away from 0.5, towards a crisp binary mask
            p = torch.sigmoid(logit)
            crisp = F.binary_cross_entropy_with_logits(logit, (p > 0.5).float().detach())
            loss = loss + self.mask_loss * crisp
            stats["loss_G_mask"] = crisp.item()
        loss.backward()
        return stats, w.detach()

    def accumulate_d(self, z: torch.Tensor, fake_types: torch.Tensor, real_img: torch.Tensor,
                     real_mask: torch.Tensor, real_types: torch.Tensor, do_r1: bool) -> dict[str, float]:
        """D main phase (+ R1 on the same real forward when `do_r1`, scaled by the interval: lazy R1)."""
        with torch.no_grad():
            fake_img, fake_logit, _ = self.generate(z, onehot(fake_types, self.n_types))
        fake = self.d_logits(fake_img, torch.sigmoid(fake_logit), onehot(fake_types, self.n_types))
        c_real = onehot(real_types, self.n_types)
        if do_r1:
            # R1 w.r.t. the *augmented* reals: grid_sample has no double backward, and the penalty is about
            # D's smoothness on what it actually sees
            with torch.no_grad():
                aug_img, aug_mask = augment(real_img, real_mask, self.policy)
            aug_img.requires_grad_(True)
            aug_mask.requires_grad_(True)
            real = self.D(aug_img, aug_mask, c_real)
        else:
            real = self.d_logits(real_img, real_mask, c_real)
        loss = F.softplus(fake).mean() + F.softplus(-real).mean()
        stats = {"loss_D": loss.item(), "D_real": real.mean().item(), "D_fake": fake.mean().item()}
        if do_r1:
            g_img, g_mask = torch.autograd.grad(real.sum(), [aug_img, aug_mask], create_graph=True)
            penalty = g_img.square().sum([1, 2, 3]) + g_mask.square().sum([1, 2, 3])
            r1 = penalty.mean() * (self.r1_gamma / 2) * self.r1_interval
            loss = loss + r1
            stats["loss_R1"] = penalty.mean().item()
        loss.backward()
        return stats
