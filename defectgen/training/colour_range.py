"""The colour-range term of `train patch --range-weight`: G's defect pixels stay within the real defects' range.

D judges every input through DiffAugment's colour op (brightness, saturation, contrast per image), so "how dark
against its surround" and "how saturated" are ambiguous to it by a factor of up to 3: the default G draws 7 % of
its hole pixels at pure black (the held-in holes 0.4 %) and a quarter of its print pixels redder than 99 % of the
real ones. Dropping the op lets G's colours run (docs/design.md, "Where it is weak"); this term bounds them instead,
per defect type and channel, by the held-in defect pixels' own quantiles `[q, 1 - q]`.

The hinge is L1 and measured on the colour head's *input* (the bound mapped through the head's inverse): a
tanh at black has a gradient of 0.02, so a hinge on its output would barely reach the weights that keep it
there. Only pixels inside G's hard mask count (the layered composite shows nothing else), each sample's mean
over its mask, then the batch mean.
"""

from __future__ import annotations

import torch

from defectgen.nets.patch import PatchSynthesis
from defectgen.training.config import ConfigError
from defectgen.training.patch_data import PatchData

RANGE_QUANTILE = 0.01  # the range is the real defect pixels' [1 %, 99 %] per type and channel


def colour_ranges(windows: torch.Tensor, masks: torch.Tensor, types: torch.Tensor, n_types: int,
                  q: float = RANGE_QUANTILE) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi), each [n_types, 3]: per type and channel, the q and 1 - q quantiles of the pixels inside masks.

    A type without a masked pixel gets the whole data range [-1, 1] (no constraint).
    """
    lo = torch.full((n_types, 3), -1.0)
    hi = torch.full((n_types, 3), 1.0)
    probs = torch.tensor([q, 1 - q])
    for t in range(n_types):
        sel = types == t
        inside = masks[sel, 0] > 0.5  # [n, P, P]
        if not inside.any():
            continue
        px = windows[sel].permute(1, 0, 2, 3)[:, inside]  # [3, pixels]
        qs = torch.quantile(px.float().cpu(), probs, dim=1)  # [2, 3]
        lo[t], hi[t] = qs[0], qs[1]
    return lo, hi


def only_types(lo: torch.Tensor, hi: torch.Tensor, type_names: list[str], keep: list[str]) -> tuple[torch.Tensor,
                                                                                                     torch.Tensor]:
    """The bounds with every type not in `keep` unbounded (-inf, inf): the term then leaves those types alone."""
    free = torch.tensor([name not in keep for name in type_names])
    return lo.masked_fill(free[:, None], -float("inf")), hi.masked_fill(free[:, None], float("inf"))


def parse_types(spec: str, type_names: list[str], data: str) -> list[str]:
    """`--range-types`: a comma list of the data's defect types ("" = all of them); an unknown one is an error."""
    chosen = [t.strip() for t in spec.split(",") if t.strip()] or list(type_names)
    if unknown := sorted(set(chosen) - set(type_names)):
        msg = f"--range-types: no defect type {', '.join(unknown)} in {data} (it has {', '.join(type_names)})"
        raise ConfigError(msg)
    return chosen


def head_input_bounds(synthesis: PatchSynthesis, data: PatchData, keep: list[str]) -> tuple[torch.Tensor,
                                                                                               torch.Tensor]:
    """A run's (lo, hi) [T, 3] at G's colour-head input, on the data's device: its windows' ranges, `keep` only."""
    lo, hi = colour_ranges(data.defects.cpu(), data.masks.cpu(), data.types.cpu(), len(data.type_names))
    lo, hi = only_types(synthesis.colour_head_input(lo), synthesis.colour_head_input(hi), data.type_names, keep)
    return lo.to(data.defects.device), hi.to(data.defects.device)


def range_loss(head_input: torch.Tensor, alpha: torch.Tensor, types: torch.Tensor, lo_input: torch.Tensor,
               hi_input: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of each sample's mean L1 excess beyond [lo, hi] inside its mask (module docstring).

    Args:
        head_input: [B, 3, P, P] G's colour before its head (`PatchSynthesis.raw`).
        alpha: [B, 1, P, P] G's hard mask (which pixels count; no gradient flows through it here).
        types: [B] type ids.
        lo_input, hi_input: [T, 3] the range's bounds mapped to the head's input (`colour_head_input`).
    """
    lo = lo_input[types][:, :, None, None]
    hi = hi_input[types][:, :, None, None]
    excess = (lo - head_input).clamp_min(0) + (head_input - hi).clamp_min(0)  # [B, 3, P, P]
    inside = (alpha.detach() > 0.5).to(excess.dtype)
    per_sample = (excess * inside).sum((1, 2, 3)) / (3 * inside.sum((1, 2, 3))).clamp_min(1.0)
    return per_sample.mean()
