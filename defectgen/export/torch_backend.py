"""The torch reference backend: the runtime's `Backend` protocol on the nets themselves (numpy in, numpy out).

For parity checks (`export.verify`) and benchmarks only — it lives in `export/` because it needs torch, which
the edge runtime never imports. `step` calls `objective.make_step`, the very function the step graphs were
traced from, so any difference between this backend and an exported graph is an export error. A layered
(patch) G synthesizes over the good window (`synthesize(..., good=)`); without an encoder `encode` refuses.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from defectgen.export.objective import (
    check_space,
    critic_score,
    freeze,
    is_layered,
    make_step,
    synthesize,
    to_wplus,
)
from defectgen.runtime.bundle.manifest import LOSS_TERMS


class TorchBackend:
    """Runs encoder, mapping, synthesis and the inversion step with torch (eager, CPU by default).

    Args:
        G: generator; E: encoder (None: a bundle without one); D: discriminator (all frozen on construction).
        device: torch device for the computation.
        step_batches: batch sizes `step_batches()` reports (any batch size runs; this only mirrors a bundle).
        threads: torch intra-op threads (None leaves torch's setting alone).
    """

    name = "torch"

    def __init__(self, G: nn.Module, E: nn.Module | None, D: nn.Module, *, device: str = "cpu",
                 step_batches: list[int] | None = None, threads: int | None = None) -> None:
        freeze(G, E, D)
        self.G, self.D = G.to(device), D.to(device)
        self.E = E.to(device) if E is not None else None
        self.device = torch.device(device)
        self._batches = sorted(step_batches or [1, 4, 8])
        self._steps = {space: make_step(self.G, self.E, self.D, space) for space in ("wplus", "w", "z")}
        if threads is not None:
            torch.set_num_threads(threads)

    def _t(self, x: np.ndarray) -> Tensor:
        return torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32), device=self.device)

    @staticmethod
    def _np(x: Tensor) -> np.ndarray:
        return x.detach().cpu().numpy().astype(np.float32, copy=False)

    def encode(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Encoder: (image (B,3,R,R), mask (B,1,R,R)) -> w+ (B, L, W)."""
        if self.E is None:
            msg = "this model has no encoder (a patch G): start from w_avg or random instead"
            raise ValueError(msg)
        with torch.no_grad():
            return self._np(self.E(self._t(image), self._t(mask)))

    def map(self, z: np.ndarray, type_onehot: np.ndarray) -> np.ndarray:
        """Mapping network: (z (B,Z), type_onehot (B,T)) -> w (B, W)."""
        with torch.no_grad():
            return self._np(self.G.mapping(self._t(z), self._t(type_onehot)))

    def synthesize(self, space: str, latent: np.ndarray, type_onehot: np.ndarray | None = None,
                   good: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Generator: latent -> (image (B,3,R,R), mask_logit (B,1,R,R)); `z` needs `type_onehot`, a layered
        (patch) G the good windows `good` (B,3,R,R) it draws over (ignored by a whole-part G).
        """
        check_space(space)
        onehot = None if type_onehot is None else self._t(type_onehot)
        good_t = self._t(good) if good is not None and is_layered(self.G) else None
        with torch.no_grad():
            image, mask_logit = synthesize(self.G, to_wplus(self.G, self._t(latent), space, onehot), good_t)
        return self._np(image), self._np(mask_logit)

    def step(self, space: str, latent: np.ndarray, good: np.ndarray, mask: np.ndarray, stitched: np.ndarray,
             lambdas: np.ndarray, type_onehot: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Objective terms (B, K) (already times λ) and d(sum of terms)/d(latent), via `torch.autograd.grad`."""
        check_space(space)
        lam = self._t(lambdas)
        if lam.shape != (len(LOSS_TERMS),):
            msg = f"lambdas must have shape ({len(LOSS_TERMS)},) in order {LOSS_TERMS}, got {tuple(lam.shape)}"
            raise ValueError(msg)
        args = [self._t(a) for a in (latent, good, mask, stitched)] + [lam]
        if space == "z":
            if type_onehot is None:
                msg = "latent space 'z' needs type_onehot"
                raise ValueError(msg)
            args.append(self._t(type_onehot))
        terms, grad = self._steps[space](*args)
        return self._np(terms), self._np(grad)

    def critic(self, image: np.ndarray, mask: np.ndarray, type_onehot: np.ndarray) -> np.ndarray:
        """D's per-sample realness score (B,) (`objective.critic_score`)."""
        with torch.no_grad():
            return self._np(critic_score(self.D, self._t(image), self._t(mask), self._t(type_onehot)))[:, 0]

    def step_batches(self, space: str) -> list[int]:
        """Batch sizes this backend mirrors (it runs any batch size)."""
        check_space(space)
        return list(self._batches)

    def close(self) -> None:
        """Nothing to free (kept for the protocol)."""
