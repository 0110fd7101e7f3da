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


def _brightness(x: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    return x + (torch.rand(x.shape[0], 1, 1, 1, device=x.device) - 0.5) * strength


def _saturation(x: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    mean = x.mean(dim=1, keepdim=True)
    factor = torch.rand(x.shape[0], 1, 1, 1, device=x.device) * 2 * strength + (1 - strength)  # x0..2 at 1
    return (x - mean) * factor + mean


def _contrast(x: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    factor = torch.rand(x.shape[0], 1, 1, 1, device=x.device) * strength + (1 - strength / 2)  # x0.5..1.5 at 1
    return (x - mean) * factor + mean


def color(image: torch.Tensor, mask: torch.Tensor, strength: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """DiffAugment colour: brightness, saturation, contrast on the image; the mask is untouched.

    `strength` scales every range about the identity (1: DiffAugment's brightness +-0.5, saturation x0-2,
    contrast x0.5-1.5; the same numbers are drawn at any strength). At full strength D cannot tell how dark a
    defect is against its surface, and the patch G draws its hole cores too dark; fine-tuned without the op or
    at half strength, G drew lighter cores but saturated red cracks and prints: the op is what holds G's colours.
    """
    return _contrast(_saturation(_brightness(image, strength), strength), strength), mask


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


def _chosen(b: int, p: float, device: torch.device) -> torch.Tensor:
    """[B, 1, 1, 1] 0/1: which samples an adaptive op touches (each with probability p)."""
    return (torch.rand(b, 1, 1, 1, device=device) < p).float()


def _rot90(image: torch.Tensor, mask: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """With probability p a sample turns by a random multiple of 90 degrees, 0 included (ADA's), image and mask
    together.
    """
    both = torch.cat([image, mask], dim=1)
    k = torch.randint(0, 4, (both.shape[0], 1, 1, 1), device=both.device) * _chosen(both.shape[0], p, both.device)
    out = sum((k == i).to(both.dtype) * torch.rot90(both, i, dims=(2, 3)) for i in range(4))
    return out[:, :3], out[:, 3:]


def _scale(image: torch.Tensor, mask: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """With probability p an isotropic zoom by 2^N(0, 0.2) about the centre (ADA's), bilinear, zero fill."""
    both = torch.cat([image, mask], dim=1)
    b = both.shape[0]
    chosen = _chosen(b, p, both.device)
    s = torch.exp2(torch.randn(b, device=both.device) * 0.2)
    theta = torch.zeros(b, 2, 3, device=both.device, dtype=both.dtype)
    theta[:, 0, 0] = 1 / s
    theta[:, 1, 1] = 1 / s
    grid = F.affine_grid(theta, list(both.shape), align_corners=False)
    out = F.grid_sample(both, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = chosen * out + (1 - chosen) * both  # untouched samples stay bit-exact
    return out[:, :3], out[:, 3:]


def _cutout(image: torch.Tensor, mask: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """With probability p a random square of half the side is blanked (DiffAugment's cutout): image to
    mid-grey, mask to no-defect, so the label still says what the pixels show.
    """
    b, _, h, w = image.shape
    cy = torch.randint(0, h, (b, 1, 1, 1), device=image.device)
    cx = torch.randint(0, w, (b, 1, 1, 1), device=image.device)
    ys = torch.arange(h, device=image.device).view(1, 1, h, 1)
    xs = torch.arange(w, device=image.device).view(1, 1, 1, w)
    box = ((ys - cy).abs() < h // 4) & ((xs - cx).abs() < w // 4)
    keep = 1 - box.to(image.dtype) * _chosen(b, p, image.device)
    return image * keep, mask * keep


def adaptive(image: torch.Tensor, mask: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The adaptive ops (ADA, Karras et al. 2020), each applied to a sample with probability `p`.

    DiffAugment alone at full strength did not stop D from memorising 6 real defects per type in long runs;
    ADA raises p while D is too sure of the reals (see `next_ada_p`). Every op is differentiable and applied to
    reals and fakes alike. Below p of about 0.8 none of them leaks into G (ADA's finding: the augmented
    distribution still tells the original apart); rotation leaks nothing at any p here, since the real windows
    are already turned at random. p = 0 is the identity.
    """
    if p <= 0:
        return image, mask
    for op in (_rot90, _scale, _cutout):
        image, mask = op(image, mask, p)
    return image, mask


def next_ada_p(p: float, real_sign: float, target: float, images: int, kimg: float) -> float:
    """ADA's update: p moves by images / (kimg * 1000) toward more augmentation while E[sign D(real)] >
    `target` (D is overfitting), toward less below it; clipped to [0, 1].
    """
    step = images / (kimg * 1000)
    return min(max(p + step * (1 if real_sign > target else -1), 0.0), 1.0)


def _ops() -> dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]]:
    return {"color": color, "translation": translation, "flip": flip, "flipv": flipv}


STRENGTH_OPS = ("color",)  # ops that take a strength, written name:S in a policy (0 < S <= 1)


def parse_policy(policy: str) -> list[tuple[str, float]]:
    """'translation,flip,color:0.5' -> validated (op name, strength) pairs ('' -> no augmentation)."""
    ops, out = _ops(), []
    for token in (t.strip() for t in policy.split(",") if t.strip()):
        name, colon, value = token.partition(":")
        if name not in ops:
            raise ConfigError(choice_error("augmentation", name, sorted(ops)))
        if not colon:
            out.append((name, 1.0))
            continue
        try:
            strength = float(value)
        except ValueError:
            strength = float("nan")
        if name not in STRENGTH_OPS or not 0.0 < strength <= 1.0:
            where = "a strength in (0, 1]" if name in STRENGTH_OPS else f"no strength (only {', '.join(STRENGTH_OPS)})"
            msg = f"augmentation {token!r}: {name} takes {where}"
            raise ConfigError(msg)
        out.append((name, strength))
    return out


def augment(image: torch.Tensor, mask: torch.Tensor, policy: str,
            ada_p: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the ops of `policy` in order to (image [B,3,H,W] in [-1,1], mask [B,1,H,W] in [0,1]), then the
    adaptive ones at probability `ada_p`.
    """
    ops = _ops()
    for name, strength in parse_policy(policy):
        image, mask = ops[name](image, mask, strength) if name in STRENGTH_OPS else ops[name](image, mask)
    return adaptive(image, mask, ada_p)
