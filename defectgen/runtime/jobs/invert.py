"""The one inversion loop: latent init, numpy Adam through the exported step graph, final synthesis.

Every backend (ONNX Runtime, TensorRT, the torch parity backend in `export/`) runs through this function, so
results differ between backends only by the engines' arithmetic.

    result = invert(backend, bundle, InversionBatch(good, mask, stitched, ["crack"] * 4),
                    config=InversionConfig(space="wplus", steps=10, lr=0.05))
    result.image, result.mask_logit, result.final_terms, result.failed

Rules (see `InversionConfig` for the knobs):

- **Init.** `encoder`: `E(S, M)` -> w+; for `w` its mean over layers; for `z` the encoder's w cannot be pulled back
  through the mapping network without gradients of the mapping, so we *search*: draw `z_candidates` z ~ N(0, I)
  per sample, map them with the sample's type, and start from the z whose w is nearest (L2) to the encoder's
  layer-mean w. `wavg`: the type's `w_avg` (w, w+ broadcast to all layers; for z the origin, whose mapping is the
  closest thing to w_avg). `random`: z ~ N(0, I), mapped (and broadcast) for w / w+. A sample that is variant
  k > 0 of its job (`InversionBatch.variants`, `defectgen run --variants K`) starts from z ~ N(0, I) seeded by
  (job seed, k) instead, whatever the init: K variants of one target become K different defects. A sample
  with a start of its own (`InversionBatch.starts`: G proposed its target, `propose`) starts there. The encoder
  runs only on the samples that start from it (none when every sample has a start of its own).
- **Adam** on the latent, per-sample bias-corrected, with `lr_schedule="cosine"`: the StyleGAN2 projector's ramp,
  lr · ½(1 − cos(π · min(1, (1 − t) / rampdown))) · min(1, t / rampup), t = step / steps; rampup defaults to 0
  because with 5-20 steps a ramp-up would waste the first step. A sample starting from G's own proposal takes
  `proposal_lr` as its peak and `proposal_steps` as its step count instead: its steps only refine a defect G
  drew, larger ones drift its colours, and fewer do as well; it leaves the batch after its last step.
- **Result = best finite latent** seen (lowest objective among evaluated latents, the init included), so a late
  Adam overshoot never makes the output worse; with a decreasing loss this is the last one. A sample that
  started from G's proposal with a `proposal_lr` below `lr` returns its *last* latent instead, unevaluated
  (`proposal_keep_best` False, the default): its gentle steps lowered the objective at every step in every job
  measured, so the evaluation after the last step would only confirm it, at a sixth of the step graph's time
  with 5 steps. Its `final_terms` are then those of its last evaluation, one step before.
- **Early stop (per sample).** After each evaluation a sample whose objective improved on its best by less than
  `plateau_rtol` (relative) counts a stall, otherwise its count resets; at `early_stop_patience` consecutive stalls
  it stops (0 disables). Stopped samples are no longer sent to the step graph.
- **NaN guard (per sample).** A sample whose terms or gradient are not finite is frozen at its last finite latent,
  marked `failed`, and dropped from later steps; the others go on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from defectgen.errors import BundleError, JobError, choice_error
from defectgen.runtime.backends import Backend
from defectgen.runtime.bundle import Bundle
from defectgen.runtime.bundle.manifest import LOSS_TERMS, RunDefaults

INITS = ("encoder", "wavg", "random")
LR_SCHEDULES = ("cosine", "constant")


@dataclass
class InversionConfig:
    """Hyper-parameters of one inversion (space, steps, lr and init default to `RunDefaults`)."""

    space: str = RunDefaults.space  # latent optimised: wplus (B,L,W), w (B,W) or z (B,Z)
    steps: int = RunDefaults.steps  # Adam steps (the step graph runs steps + 1 times: the last evaluates the result;
    #                                 a proposed sample skips that last evaluation unless `proposal_keep_best`)
    lr: float = RunDefaults.lr  # peak Adam learning rate
    proposal_lr: float | None = None  # peak lr of samples that start from G's own proposal (None: `lr`)
    proposal_steps: int | None = None  # Adam steps of those samples (None: `steps`)
    proposal_keep_best: bool = False  # those samples: evaluate after the last step, keep the best (False: the last)
    init: str = RunDefaults.init  # encoder | wavg | random (module docstring)
    lambdas: dict[str, float] = field(default_factory=dict)  # overrides of the bundle's default λ, by term name
    betas: tuple[float, float] = (0.9, 0.999)  # Adam moment decays
    eps: float = 1e-8  # Adam denominator guard
    lr_schedule: str = "cosine"  # cosine (StyleGAN projector ramp) | constant
    lr_rampdown: float = 0.25  # fraction of the run over which the cosine schedule decays to ~0
    lr_rampup: float = 0.0  # fraction of the run over which lr ramps up from 0 (projector: 0.05)
    early_stop_patience: int = 3  # consecutive stalled evaluations before a sample stops; 0 = never
    plateau_rtol: float = 1e-3  # an evaluation "stalls" when it improves the best objective by less than this
    z_candidates: int = 16  # z draws per sample for the encoder init in z space
    seed: int = 0  # random init, z candidates

    def validate(self, bundle: Bundle) -> None:
        """Check every field against its choices and the bundle.

        Raises:
            JobError: a bad value (with valid choices and the closest match where there are names).
            BundleError: a space the bundle has no graphs for, or an unknown λ name.
        """
        bundle.check_space(self.space)
        if self.init not in INITS:
            raise JobError(choice_error("init", self.init, INITS))
        if self.init == "encoder" and not bundle.has_encoder:
            msg = f"bundle {bundle.source} ships no encoder: use --init wavg or --init random"
            raise BundleError(msg)
        if self.lr_schedule not in LR_SCHEDULES:
            raise JobError(choice_error("lr_schedule", self.lr_schedule, LR_SCHEDULES))
        checks = [
            (self.steps >= 0, f"steps must be >= 0, got {self.steps}"),
            (self.lr > 0 and math.isfinite(self.lr), f"lr must be a finite number > 0, got {self.lr}"),
            (self.proposal_lr is None or (self.proposal_lr > 0 and math.isfinite(self.proposal_lr)),
             f"proposal lr must be a finite number > 0, got {self.proposal_lr}"),
            (self.proposal_steps is None or self.proposal_steps >= 0,
             f"proposal steps must be >= 0, got {self.proposal_steps}"),
            (0 <= self.betas[0] < 1 and 0 <= self.betas[1] < 1, f"betas must be in [0, 1), got {self.betas}"),
            (0 < self.lr_rampdown <= 1, f"lr_rampdown must be in (0, 1], got {self.lr_rampdown}"),
            (0 <= self.lr_rampup <= 1, f"lr_rampup must be in [0, 1], got {self.lr_rampup}"),
            (self.early_stop_patience >= 0, f"early_stop_patience must be >= 0, got {self.early_stop_patience}"),
            (self.z_candidates >= 1, f"z_candidates must be >= 1, got {self.z_candidates}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise JobError(msg)
        bundle.lambda_vector(self.lambdas)

    def lr_for(self, proposed: bool) -> float:
        """Peak lr of a sample: `proposal_lr` when G proposed its target (and it is set), else `lr`."""
        return self.proposal_lr if proposed and self.proposal_lr is not None else self.lr

    def steps_for(self, proposed: bool) -> int:
        """Adam steps of a sample: `proposal_steps` when G proposed its target (and it is set), else `steps`."""
        return self.proposal_steps if proposed and self.proposal_steps is not None else self.steps

    def lr_at(self, step: int, steps: int | None = None) -> float:
        """Learning rate of Adam step `step` (0-based) out of `steps` (default: the config's)."""
        if self.lr_schedule == "constant":
            return self.lr
        t = step / max(1, self.steps if steps is None else steps)
        ramp = 0.5 - 0.5 * math.cos(math.pi * min(1.0, (1.0 - t) / self.lr_rampdown))
        if self.lr_rampup > 0:
            ramp *= min(1.0, t / self.lr_rampup)
        return self.lr * ramp


@dataclass
class InversionBatch:
    """One batch of jobs at model resolution, all float32 (see docs/bundle.md "Tensors and conventions")."""

    good: np.ndarray  # (B,3,R,R) the good image I, in [-1, 1]
    mask: np.ndarray  # (B,1,R,R) target mask M, {0, 1}
    stitched: np.ndarray  # (B,3,R,R) I with a real defect pasted into M (S); = good when there is no reference
    types: list[str]  # B defect type names
    variants: list[tuple[int, int]] | None = None  # per sample (job seed, variant k); k > 0 starts elsewhere
    starts: list[np.ndarray | None] | None = None  # per sample: its own start latent in the run's space, or None

    def __post_init__(self) -> None:
        n = len(self.good)
        if not n or len(self.mask) != n or len(self.stitched) != n or len(self.types) != n or any(
                x is not None and len(x) != n for x in (self.variants, self.starts)):
            msg = (f"inversion batch sizes disagree or are empty: good {len(self.good)}, mask {len(self.mask)}, "
                   f"stitched {len(self.stitched)}, types {len(self.types)}")
            raise JobError(msg)

    def __len__(self) -> int:
        return len(self.good)


@dataclass
class InversionResult:
    """What `invert` returns; arrays are per sample, batch first."""

    latent: np.ndarray  # best finite latent (B, *latent shape); a proposed sample's last one (module docstring)
    image: np.ndarray  # G_img(latent) (B,3,R,R) in [-1, 1]
    mask_logit: np.ndarray  # G_mask(latent) (B,1,R,R)
    terms_history: np.ndarray  # (S+1, B, K) terms (× λ) per evaluation, S = most steps of a sample; NaN: not run
    final_terms: np.ndarray  # (B, K) terms at `latent` (a proposed sample's last one: at its last evaluation)
    steps_run: np.ndarray  # (B,) Adam updates applied to each sample
    failed: np.ndarray  # (B,) bool: loss or gradient became non-finite (latent frozen at its last finite value)
    init_latent: np.ndarray  # (B, *latent shape) the starting point
    timings: dict[str, float]  # init_s, steps_s, synthesize_s, total_s (seconds), step_calls

    @property
    def objective(self) -> np.ndarray:
        """(steps+1, B) summed objective per evaluation (NaN where not run)."""
        return self.terms_history.sum(-1)

    @property
    def final_objective(self) -> np.ndarray:
        """(B,) objective at the returned latent (a proposed sample returning its last one: at the one before)."""
        return self.final_terms.sum(-1)


def latents_of(backend: Backend, bundle: Bundle, space: str, z: np.ndarray, types: list[str]) -> np.ndarray:
    """Latents of `space` for z (B,Z): z itself, its mapped w, or that w broadcast to every layer (w+)."""
    if space == "z":
        return z
    w = backend.map(z, bundle.type_onehot(types))
    return w if space == "w" else np.repeat(w[:, None], bundle.num_ws, 1)


def init_latent(backend: Backend, bundle: Bundle, batch: InversionBatch, config: InversionConfig,
                rng: np.random.Generator) -> np.ndarray:
    """The starting latent for `config.init` in `config.space`; variants k > 0 start from a random latent drawn
    from their (job seed, k), so K variants of one target are K different defects, and samples with a start of
    their own start there (module docstring).
    """
    own = [s is not None for s in batch.starts] if batch.starts is not None else [False] * len(batch)
    picks = [i for i, (_, k) in enumerate(batch.variants or []) if k > 0 and not own[i]]
    elsewhere = set(picks)
    rows = np.array([i for i in range(len(batch)) if not own[i] and i not in elsewhere], int)
    c0 = _configured_init(backend, bundle, batch, config, rng, rows)
    if picks:
        z = np.stack([np.random.default_rng([seed, k]).standard_normal(bundle.z_dim)
                      for seed, k in (batch.variants[i] for i in picks)]).astype(np.float32)  # type: ignore[index]
        c0[picks] = latents_of(backend, bundle, config.space, z, [batch.types[i] for i in picks])
    for i, start in enumerate(batch.starts or []):
        if start is not None:
            if start.shape != c0.shape[1:]:
                msg = f"sample {i}'s start latent has shape {start.shape}; {config.space} needs {c0.shape[1:]}"
                raise JobError(msg)
            c0[i] = start
    return c0


def _configured_init(backend: Backend, bundle: Bundle, batch: InversionBatch, config: InversionConfig,
                     rng: np.random.Generator, rows: np.ndarray) -> np.ndarray:
    """`config.init` for the whole batch; the encoder runs on `rows` only (the samples that start from it: the
    others' starts replace its output), their latents are the same as with the whole batch encoded.
    """
    space, n = config.space, len(batch)
    onehot = bundle.type_onehot(batch.types)
    if config.init == "encoder":
        z = None  # drawn for every sample whatever `rows`, so the random stream does not depend on it
        if space == "z":
            z = rng.standard_normal((n, config.z_candidates, bundle.z_dim)).astype(np.float32)
        c0 = np.zeros((n, *bundle.latent_shape(space)), np.float32)
        if not len(rows):
            return c0
        wp = backend.encode(batch.stitched[rows], batch.mask[rows])
        if space == "wplus":
            c0[rows] = wp
            return c0
        w_enc = wp.mean(1)
        if space == "w":
            c0[rows] = w_enc
            return c0
        zr = z[rows]  # type: ignore[index]
        w = backend.map(zr.reshape(-1, bundle.z_dim), np.repeat(onehot[rows], config.z_candidates, 0))
        dist = ((w.reshape(len(rows), config.z_candidates, -1) - w_enc[:, None]) ** 2).sum(-1)
        c0[rows] = zr[np.arange(len(rows)), dist.argmin(1)]
        return c0
    if config.init == "wavg":
        if space == "z":
            return np.zeros((n, bundle.z_dim), np.float32)
        w = np.stack([bundle.w_avg(t) for t in batch.types])
    else:
        z = rng.standard_normal((n, bundle.z_dim)).astype(np.float32)
        if space == "z":
            return z
        w = backend.map(z, onehot)
    return w if space == "w" else np.repeat(w[:, None], bundle.num_ws, 1)


def invert(backend: Backend, bundle: Bundle, batch: InversionBatch, *, config: InversionConfig | None = None,
           callback: Callable[[int, np.ndarray], None] | None = None) -> InversionResult:
    """Invert a batch of jobs: init, Adam through the step graph, synthesize the best latent.

    Args:
        backend: any `Backend` (ort-cpu, ort-cuda, ort-trt, tensorrt, ...).
        bundle: the bundle the backend runs (sizes, λ defaults, w_avg, type names).
        batch: good images, target masks, stitched references and defect types.
        config: hyper-parameters; default `InversionConfig()`.
        callback: called after each evaluation as `callback(i, terms_history[i])`, e.g. for a progress bar.

    Returns:
        The result; samples that hit NaN/inf are flagged in `failed`, not raised.

    Raises:
        JobError: bad config values or inconsistent batch.
        BundleError: a space or λ name the bundle does not have, an unknown defect type.
    """
    cfg = config or InversionConfig()
    cfg.validate(bundle)
    t_start = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    lam = bundle.lambda_vector(cfg.lambdas)
    onehot = bundle.type_onehot(batch.types) if cfg.space == "z" else None
    c = np.ascontiguousarray(init_latent(backend, bundle, batch, cfg, rng), dtype=np.float32)
    c0 = c.copy()
    t_init = time.perf_counter()

    n, k = len(batch), len(LOSS_TERMS)
    own = [s is not None for s in batch.starts] if batch.starts is not None else [False] * n
    budget = np.array([cfg.steps_for(o) for o in own], int)  # Adam steps per sample
    gentle = cfg.lr_for(True) < cfg.lr  # the rule rests on the proposals' smaller steps
    take_last = np.array(own, bool) & (budget > 0) & (gentle and not cfg.proposal_keep_best)  # no last evaluation
    total = int(budget.max())
    history = np.full((total + 1, n, k), np.nan, np.float32)
    best_c, best_f = c.copy(), np.full(n, np.inf)
    best_terms = np.full((n, k), np.nan, np.float32)
    m, v = np.zeros_like(c), np.zeros_like(c)
    stalls, steps_run = np.zeros(n, int), np.zeros(n, int)
    lr_scale = np.array([cfg.lr_for(o) / cfg.lr for o in own], np.float32)  # per sample, times the schedule
    failed = ~np.isfinite(c).reshape(n, -1).all(1)  # a NaN init (e.g. a broken encoder) fails at once
    active = ~failed
    calls = 0
    for i in range(total + 1):
        done = active & take_last & (budget == i)  # their last step ran: the result is that latent
        best_c[done], active[done] = c[done], False
        idx = np.flatnonzero(active)
        if not len(idx):
            break
        terms, grad = _step(backend, cfg.space, c, batch, lam, onehot, idx)
        calls += 1
        history[i, idx] = terms
        f = terms.sum(1, dtype=np.float64)
        ok = np.isfinite(terms).all(1) & np.isfinite(grad).reshape(len(idx), -1).all(1) & np.isfinite(f)
        bad = idx[~ok]
        failed[bad], active[bad] = True, False
        c[bad] = best_c[bad]  # frozen at its best finite latent: the one returned
        good_idx, f, terms, grad = idx[ok], f[ok], terms[ok], grad[ok]
        prev = best_f[good_idx]
        improved = f < prev
        with np.errstate(invalid="ignore", divide="ignore"):  # the first evaluation improves on inf
            gain = np.where(np.isinf(prev), np.inf, (prev - f) / np.maximum(np.abs(prev), 1e-12))
        stalls[good_idx] = np.where(gain >= cfg.plateau_rtol, 0, stalls[good_idx] + 1)
        upd = good_idx[improved]
        best_c[upd], best_f[upd], best_terms[upd] = c[upd], f[improved], terms[improved]
        if callback is not None:
            callback(i, history[i])
        if i == total:
            break
        stop = budget[good_idx] <= i  # its last evaluation was this one
        if cfg.early_stop_patience:
            stop |= stalls[good_idx] >= cfg.early_stop_patience
        active[good_idx[stop]] = False
        good_idx, grad = good_idx[~stop], grad[~stop]
        lr = np.array([cfg.lr_at(i, int(s)) for s in budget[good_idx]], np.float32) * lr_scale[good_idx]
        _adam(c, m, v, grad, good_idx, t=i + 1, lr=lr, cfg=cfg)
        steps_run[good_idx] += 1
    failed |= ~np.isfinite(best_c).reshape(n, -1).all(1)  # a last latent nothing evaluated
    t_steps = time.perf_counter()
    image, mask_logit = backend.synthesize(cfg.space, best_c, onehot, good=batch.good)
    t_end = time.perf_counter()
    timings = {"init_s": t_init - t_start, "steps_s": t_steps - t_init, "synthesize_s": t_end - t_steps,
               "total_s": t_end - t_start, "step_calls": float(calls)}
    return InversionResult(latent=best_c, image=image, mask_logit=mask_logit, terms_history=history,
                           final_terms=best_terms, steps_run=steps_run, failed=failed, init_latent=c0,
                           timings=timings)


def _step(backend: Backend, space: str, c: np.ndarray, batch: InversionBatch, lam: np.ndarray,
          onehot: np.ndarray | None, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run the step graph on the active samples only (no copies while all are active)."""
    if len(idx) == len(c):
        return backend.step(space, c, batch.good, batch.mask, batch.stitched, lam, onehot)
    return backend.step(space, c[idx], batch.good[idx], batch.mask[idx], batch.stitched[idx], lam,
                        None if onehot is None else onehot[idx])


def _adam(c: np.ndarray, m: np.ndarray, v: np.ndarray, grad: np.ndarray, idx: np.ndarray, *, t: int,
          lr: np.ndarray, cfg: InversionConfig) -> None:
    """One bias-corrected Adam update of rows `idx` of `c`, in place (t = 1-based step count; `lr` per row)."""
    if not len(idx):
        return
    b1, b2 = cfg.betas
    m[idx] = b1 * m[idx] + (1 - b1) * grad
    v[idx] = b2 * v[idx] + (1 - b2) * grad * grad
    m_hat = m[idx] / (1 - b1**t)
    v_hat = v[idx] / (1 - b2**t)
    lr = np.asarray(lr, np.float32).reshape((-1,) + (1,) * (c.ndim - 1))
    c[idx] -= (lr * m_hat / (np.sqrt(v_hat) + cfg.eps)).astype(np.float32)
