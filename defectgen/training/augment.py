"""Differentiable augmentation for tiny datasets (DiffAugment, Zhao et al. 2020), image and mask together.

D sees every real *and* fake sample through the same random augmentation, so it cannot memorise the few dozen
defective images, while G still gets gradients (every op is differentiable) and the augmentation does not leak
into what G draws. Geometric ops move image and mask by the *same* amount (the mask must stay aligned with its
defect); colour ops touch the image only (a mask has no colour). Randomness comes from the global torch RNG,
which the trainers reseed per step, so augmentation is reproducible and resumable.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from defectgen.errors import choice_error
from defectgen.training.config import ConfigError


def _brightness(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.rand(x.shape[0], 1, 1, 1, device=x.device) - 0.5)


def _saturation(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (torch.rand(x.shape[0], 1, 1, 1, device=x.device) * 2) + mean


def _contrast(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * (torch.rand(x.shape[0], 1, 1, 1, device=x.device) + 0.5) + mean


def color(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DiffAugment colour: brightness, saturation, contrast on the image; the mask is untouched."""
    return _contrast(_saturation(_brightness(image))), mask


def _shift(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Shift each sample by integer pixels (dx, dy), zero fill; nearest grid_sample = exact integer moves."""
    b, _, h, w = x.shape
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = 1
    theta[:, 1, 1] = 1
    theta[:, 0, 2] = -2 * dx.to(x.dtype) / w  # output pixel i samples input pixel i - dx
    theta[:, 1, 2] = -2 * dy.to(x.dtype) / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def translation(image: torch.Tensor, mask: torch.Tensor, ratio: float = 0.125) -> tuple[torch.Tensor, torch.Tensor]:
    """Random shift by up to `ratio` of the side (DiffAugment default 1/8), same shift for image and mask.

    The image is filled with 0 (mid-grey in [-1, 1], as DiffAugment) and the mask with 0 (no defect).
    """
    b, _, h, w = image.shape
    sx, sy = int(w * ratio + 0.5), int(h * ratio + 0.5)
    dx = torch.randint(-sx, sx + 1, (b,), device=image.device)
    dy = torch.randint(-sy, sy + 1, (b,), device=image.device)
    both = _shift(torch.cat([image, mask], dim=1), dx, dy)
    return both[:, :3], both[:, 3:]


def _flip(image: torch.Tensor, mask: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    flip = (torch.rand(image.shape[0], 1, 1, 1, device=image.device) < 0.5).to(image.dtype)
    return (image * (1 - flip) + image.flip(dim) * flip,
            mask * (1 - flip) + mask.flip(dim) * flip)


def flip(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal flip with p=0.5 per sample (parts and defects have no handedness)."""
    return _flip(image, mask, 3)


def flipv(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Vertical flip with p=0.5 per sample (for top-down parts such as nuts, screws, pills)."""
    return _flip(image, mask, 2)


def _ops() -> dict[str, Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]]:
    return {"color": color, "translation": translation, "flip": flip, "flipv": flipv}


def parse_policy(policy: str) -> list[str]:
    """'translation,flip,color' -> validated op names ('' -> no augmentation)."""
    names = [p.strip() for p in policy.split(",") if p.strip()]
    ops = _ops()
    for n in names:
        if n not in ops:
            raise ConfigError(choice_error("augmentation", n, sorted(ops)))
    return names


def augment(image: torch.Tensor, mask: torch.Tensor, policy: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the ops of `policy` in order to (image [B,3,H,W] in [-1,1], mask [B,1,H,W] in [0,1])."""
    ops = _ops()
    for name in parse_policy(policy):
        image, mask = ops[name](image, mask)
    return image, mask
