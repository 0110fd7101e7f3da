"""THE inversion objective (docs/design.md "The method"), defined once.

Used by the exported step graphs (`make_step` is what `make_fx` traces), by the torch reference backend and by
the benchmarks, so all three optimise exactly the same function. For a batch of jobs — latent `c`, good image
`I`, target mask `M`, stitched reference `S` — it returns per-sample terms (B, 6), each already multiplied by
its weight from the `lambdas` input, in the order of `LOSS_TERMS`:

    mask  = mean((σ(G_mask(c)) − M)²)                       generated mask follows the target
    bg    = mean(((1 − M) ⊙ (G_img(c) − I))²)               background equals the good image
    def   = mean((F(M ⊙ G_img(c), M) − F(M ⊙ S, M))²)       defect region looks like the reference
    pix   = mean((M ⊙ (G_img(c) − S))²)                     pixel pull to the stitch
    dom   = mean((c⁺ − E(G_img(c), σ(G_mask(c))))²)         idinvert domain regulariser, in w+ space
    prior = mean(z²)  or  mean((w − w̄)²)                    keeps the latent near the training distribution

Choices (documented in docs/bundle.md as well):

- `F` is the frozen discriminator trunk, `D.features(image, mask)`. Its mask channel gets the *target* mask `M`
  on both sides, so the term compares only the appearance inside the defect region; feeding σ(G_mask) instead
  would duplicate the mask term. A list of feature maps contributes the mean of the per-level MSEs.
- `dom` compares in w+ space for every latent space: `c⁺` is `c` itself for `wplus`, `c` broadcast to all
  layers for `w`, and `mapping(z, type)` broadcast for `z`. So E's output is never projected to w or z.
- `prior` is a *mean* over the latent's elements (not a sum) so one λ_prior means the same for all spaces.
  For `w`/`wplus` the centre w̄ is the mean of `w_avg` over all types (StyleGAN's unconditional w_avg): the
  step graphs of those spaces take no `type_onehot` input (docs/bundle.md), so a per-type centre is not
  available in-graph. For `z` the prior is towards 0, the mode of the mapping network's input distribution.
- Means are over all non-batch elements (pixels × channels), so terms are comparable across resolutions.
- A *layered* generator (patch mode, `G.layered` true; `export/patch.py` adapts the patch G) draws over the good
  window: its synthesis takes `I` as well, `G.synthesis(w+, I) -> (composite, mask logit)`, where the
  composite is the smooth σ-alpha blend of its colour layer over `I`, so the gradient reaches the alpha. Every
  term is then the same formula on that composite (`bg` becomes "no alpha outside M").
- Without an encoder (`E` None: a patch G has none) the `dom` column stays, as zeros, so the step graph keeps
  the 6-term layout and one λ vector fits every bundle.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from defectgen.runtime.bundle.manifest import LOSS_TERMS, SPACES

# Weights of LOSS_TERMS used when a job sets none (docs/bundle.md defaults; stored in the manifest).
DEFAULT_LAMBDAS: dict[str, float] = {"mask": 1.0, "bg": 1.0, "def": 0.1, "pix": 0.1, "dom": 0.1, "prior": 0.001}

StepFn = Callable[..., tuple[Tensor, Tensor]]


def check_space(space: str) -> str:
    """Return `space` if it is a known latent space, else raise ValueError listing the valid ones."""
    if space not in SPACES:
        from defectgen.errors import choice_error

        raise ValueError(choice_error("latent space", space, SPACES))
    return space


def w_avg_table(G: nn.Module) -> Tensor:
    """The generator's per-type average w, shape (T, W), wherever the net keeps it."""
    for owner in (G, getattr(G, "mapping", None)):
        table = getattr(owner, "w_avg", None)
        if isinstance(table, Tensor):
            return table if table.ndim == 2 else table.reshape(1, -1)
    msg = f"{type(G).__name__} has no w_avg buffer (expected G.w_avg or G.mapping.w_avg of shape (T, W))"
    raise AttributeError(msg)


def to_wplus(G: nn.Module, latent: Tensor, space: str, type_onehot: Tensor | None = None) -> Tensor:
    """Any latent -> w+ (B, L, W): identity for `wplus`, broadcast for `w`, mapping + broadcast for `z`.

    The broadcast is an `expand` (its backward is a sum over layers, no scatter).
    """
    check_space(space)
    if space == "wplus":
        return latent
    if space == "z":
        if type_onehot is None:
            msg = "space 'z' needs type_onehot (B, T) for the mapping network"
            raise ValueError(msg)
        latent = G.mapping(latent, type_onehot)
    return latent.unsqueeze(1).expand(-1, G.num_ws, -1)  # [B, L, W]


def is_layered(G: nn.Module) -> bool:
    """True for a layered (patch-mode) generator, whose synthesis draws over the good window."""
    return bool(getattr(G, "layered", False))


def synthesize(G: nn.Module, wp: Tensor, good: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """`G.synthesis(w+)`, or `G.synthesis(w+, good)` for a layered G: -> (image (B,3,R,R), mask logit)."""
    if not is_layered(G):
        return G.synthesis(wp)
    if good is None:
        msg = "a layered (patch) generator draws over the good window: synthesis needs `good` (B, 3, P, P)"
        raise ValueError(msg)
    return G.synthesis(wp, good)


def critic_score(D: nn.Module, image: Tensor, mask: Tensor, type_onehot: Tensor) -> Tensor:
    """D's realness logit [B, 1] of (composite, mask {0,1}) for the bundle's one-hot (over "good" + defect
    types), each sample on its own: a patch D knows only the defect types, so the "good" column is dropped.
    """
    n = int(D.cfg.n_types)
    if type_onehot.shape[1] < n:
        msg = f"type_onehot has {type_onehot.shape[1]} columns, D judges {n} types"
        raise ValueError(msg)
    return D(image, mask, type_onehot[:, type_onehot.shape[1] - n:], per_sample=True)


def _mse(a: Tensor, b: Tensor | float = 0.0) -> Tensor:
    """Per-sample mean squared difference over all non-batch dims -> (B,)."""
    return (a - b).square().flatten(1).mean(1)


def _feature_mse(fa: Tensor | Sequence[Tensor], fb: Tensor | Sequence[Tensor]) -> Tensor:
    if isinstance(fa, Tensor):
        return _mse(fa, fb)  # type: ignore[arg-type]
    per_level = [_mse(a, b) for a, b in zip(fa, fb, strict=True)]
    return torch.stack(per_level, 1).mean(1)


def prior_term(G: nn.Module, latent: Tensor, space: str) -> Tensor:
    """Per-sample prior (B,): mean(z²) for `z`, mean((w − w̄)²) for `w`/`wplus` (module docstring)."""
    if space == "z":
        return _mse(latent)
    w_bar = w_avg_table(G).mean(0)  # [W]; a frozen buffer, so a constant in the traced graph
    return _mse(latent, w_bar)


def objective_terms(
    G: nn.Module,
    E: nn.Module | None,
    D: nn.Module,
    latent: Tensor,
    good: Tensor,
    mask: Tensor,
    stitched: Tensor,
    lambdas: Tensor,
    type_onehot: Tensor | None = None,
    *,
    space: str,
) -> Tensor:
    """Per-sample weighted loss terms (B, 6) in `LOSS_TERMS` order (module docstring for the formulas).

    Args:
        G: frozen generator (`mapping`, `synthesis`, `num_ws`, `w_avg`; `layered`: synthesis takes `good`).
        E: frozen encoder, `E(image, mask) -> w+`; None: the `dom` column is zeros.
        D: frozen discriminator with `features(image, mask)`.
        latent: (B, L, W) for `wplus`, (B, W) for `w`, (B, Z) for `z`.
        good: good images I (B, 3, R, R) in [-1, 1].
        mask: target masks M (B, 1, R, R) in {0, 1}.
        stitched: stitched references S (B, 3, R, R).
        lambdas: weights (6,) in `LOSS_TERMS` order.
        type_onehot: (B, T) defect type one-hot, required for `z`.
        space: `wplus`, `w` or `z`.

    Returns:
        Terms (B, 6), each multiplied by its λ; the objective of sample b is `terms[b].sum()`.
    """
    wp = to_wplus(G, latent, space, type_onehot)  # [B, L, W]
    image, mask_logit = synthesize(G, wp, good)  # [B, 3, R, R], [B, 1, R, R]
    mask_prob = torch.sigmoid(mask_logit)
    t_mask = _mse(mask_prob, mask)
    t_bg = _mse((1 - mask) * (image - good))
    t_def = _feature_mse(D.features(mask * image, mask), D.features(mask * stitched, mask))
    t_pix = _mse(mask * (image - stitched))
    t_dom = _mse(wp, E(image, mask_prob)) if E is not None else torch.zeros_like(t_mask)
    t_prior = prior_term(G, latent, space)
    terms = torch.stack([t_mask, t_bg, t_def, t_pix, t_dom, t_prior], 1)  # [B, 6]
    return terms * lambdas.reshape(1, len(LOSS_TERMS))


def freeze(*nets: nn.Module | None) -> None:
    """eval() + requires_grad_(False): frozen weights make `nets.ops` use their export-ready adjoint convs."""
    for net in nets:
        if net is not None:
            net.eval().requires_grad_(False)


def make_step(G: nn.Module, E: nn.Module | None, D: nn.Module, space: str) -> StepFn:
    """The step function the exported graph computes: objective terms and their gradient w.r.t. the latent.

    Args:
        G: generator, E: encoder (None: no `dom` term), D: discriminator — frozen by this call (`freeze`).
        space: `wplus`, `w` or `z`.

    Returns:
        `step(latent, good, mask, stitched, lambdas[, type_onehot]) -> (terms (B, 6), grad)` where `grad` has
        the latent's shape and is d(sum of all terms over the batch)/d(latent) — per-sample gradients, since
        samples are independent. Works under `torch.no_grad()` callers and under `make_fx` tracing.
    """
    check_space(space)
    freeze(G, E, D)

    def step(latent: Tensor, good: Tensor, mask: Tensor, stitched: Tensor, lambdas: Tensor,
             type_onehot: Tensor | None = None) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            c = latent.detach().requires_grad_(True)
            terms = objective_terms(G, E, D, c, good, mask, stitched, lambdas, type_onehot, space=space)
            (grad,) = torch.autograd.grad(terms.sum(), c)
        return terms.detach(), grad

    return step
