"""Parity proofs for exported graphs: ONNX Runtime vs torch, and finite differences of the step graphs.

For every exported graph, on random inputs and (when a dataset is given) on real ones:

- **outputs**: `rel = max|onnx − torch| / max|torch|` per output (the error relative to the output's scale,
  so one tiny reference value cannot blow it up); bound `output_rel` (1e-4) for encoder/mapping/synthesis
  outputs and the step's `terms`, `grad_rel` (1e-3) for the step's `grad` (fp32 backward through ~10 layers).
- **finite differences** (step graphs): along unit directions `d` (the normalised gradient itself, then random
  ones), the central difference `(f(c + εd) − f(c − εd)) / 2ε` of the *exported* graph's objective
  `f = terms.sum()` (accumulated in float64) is compared with the *exported* gradient's `<g, d>`; the error is
  normalised by `‖g‖₂` (the largest value `<g, d>` can take), bound `fd_rel` (1e-2). Each direction is tried
  at ε = 3e-3, 1e-3 and 3e-4 and keeps the smallest error: the truncation error shrinks as ε² where the
  objective curves sharply (the z space near some real latents: 1.9e-2 at 3e-3, 1.4e-3 at 1e-3), the fp32
  round-off stays ~1e-4·‖g‖ at 1e-3, and a wrong gradient (a missing term, a sign, a dropped branch) is off by
  O(1) at every ε. The one-sided differences `(f(c ± εd) − f(c)) / ±ε` count too: where a leaky ReLU sits at
  its kink, autograd returns one side's slope and the central difference the mean of both sides at every ε (the
  z space of the adaptively augmented default: 1.19e-2 at all three steps, centrally).

Patch-mode (layered G) graphs are checked the same way: synthesis gets the good window as well, and without an
encoder the real-input latents start at the type's `w_avg` (where `defectgen run --init wavg` starts).

Random inputs use a batch of 3 for symbolic-batch graphs (different from the export example batch 2, so a
batch size baked in by mistake fails) and λ = 1 for every term (so no term hides behind a small weight).
"""

from __future__ import annotations

import json
import logging
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from defectgen.errors import DefectgenError
from defectgen.export.bank import RealInputs
from defectgen.export.graphs import GraphResult, ModelDims, example_inputs
from defectgen.export.objective import w_avg_table
from defectgen.export.torch_backend import TorchBackend
from defectgen.runtime.bundle.manifest import LOSS_TERMS

log = logging.getLogger("defectgen.export")

VERIFY_NAME = "verify.json"
SYMBOLIC_TEST_BATCH = 3


class VerifyError(DefectgenError):
    """An exported graph disagrees with torch, or its gradient with finite differences, beyond the bounds."""


@dataclass(frozen=True)
class Bounds:
    """Pass/fail bounds of the parity check (module docstring for the metrics)."""

    output_rel: float = 1e-4  # forward outputs and step terms, fp32
    grad_rel: float = 1e-3  # step gradient, fp32
    fd_rel: float = 1e-2  # |finite difference - <g, d>| / ||g|| (central or one-sided, the best)
    fd_eps: tuple[float, ...] = (3e-3, 1e-3, 3e-4)  # finite-difference steps along unit directions (best counts)
    fd_directions: int = 3  # random directions (plus the gradient direction)


@dataclass
class Check:
    """One graph on one input set."""

    file: str
    inputs: str  # "random" or "real"
    batch: int
    errors: dict[str, float]  # output name -> rel error vs torch
    fd: list[float] = field(default_factory=list)  # finite-difference errors (step graphs)
    passed: bool = True
    notes: list[str] = field(default_factory=list)


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    """max|got − want| / max|want| (0 when both are all zeros)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return float("inf")
    scale = float(np.abs(want).max()) if want.size else 0.0
    diff = float(np.abs(got - want).max()) if want.size else 0.0
    if not np.isfinite(diff):
        return float("inf")
    return diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))


class _Session:
    """A thin ORT session wrapper returning outputs by name."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # what the runtime runs
        opts.log_severity_level = 3
        self.sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.sess.get_outputs()]

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feeds.items()}
        return dict(zip(self.names, self.sess.run(None, feeds), strict=True))


def _random_feeds(g: GraphResult, dims: ModelDims, seed: int) -> dict[str, np.ndarray]:
    batch = g.batch if g.kind == "step" else SYMBOLIC_TEST_BATCH
    return {k: v.numpy() for k, v in example_inputs(g.kind, dims, space=g.space, batch=batch, seed=seed).items()}


def _real_latent(ref: TorchBackend, space: str, real: RealInputs, rng: np.random.Generator,
                 dims: ModelDims) -> np.ndarray:
    """Latents a real job would start from: the encoder's code of S (its layer mean for w), random z for z;
    without an encoder the type's w_avg (broadcast for w+).
    """
    if space == "z":
        return rng.standard_normal((len(real.good), dims.z_dim)).astype(np.float32)
    if ref.E is None:
        w = (real.type_onehot @ w_avg_table(ref.G).detach().cpu().numpy()).astype(np.float32)
        return np.repeat(w[:, None], dims.num_ws, 1) if space == "wplus" else w
    wp = ref.encode(real.stitched, real.mask)
    return wp if space == "wplus" else wp.mean(1)


def _real_feeds(g: GraphResult, dims: ModelDims, ref: TorchBackend, real: RealInputs,
                seed: int) -> dict[str, np.ndarray] | None:
    rng = np.random.default_rng(seed)
    r = real.take(g.batch if g.kind == "step" else min(len(real.good), 8))
    if g.kind == "encoder":
        return {"image": r.defective, "mask": r.mask}
    if g.kind == "mapping":
        return {"z": rng.standard_normal((len(r.good), dims.z_dim)).astype(np.float32), "type_onehot": r.type_onehot}
    if g.kind == "critic":  # real defective windows and their masks, as D judged in training
        return {"image": r.defective, "mask": r.mask, "type_onehot": r.type_onehot}
    assert g.space is not None
    feeds = {"latent": _real_latent(ref, g.space, r, rng, dims)}
    if g.kind == "step":
        feeds.update(good=r.good, mask=r.mask, stitched=r.stitched, lambdas=np.ones(len(LOSS_TERMS), np.float32))
    elif dims.layered:
        feeds["good"] = r.good
    if g.space == "z":
        feeds["type_onehot"] = r.type_onehot
    return feeds


def _torch_outputs(g: GraphResult, ref: TorchBackend, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if g.kind == "encoder":
        return {"wplus": ref.encode(feeds["image"], feeds["mask"])}
    if g.kind == "mapping":
        return {"w": ref.map(feeds["z"], feeds["type_onehot"])}
    if g.kind == "critic":
        return {"score": ref.critic(feeds["image"], feeds["mask"], feeds["type_onehot"])[:, None]}
    assert g.space is not None
    onehot = feeds.get("type_onehot")
    if g.kind == "synthesis":
        image, mask_logit = ref.synthesize(g.space, feeds["latent"], onehot, good=feeds.get("good"))
        return {"image": image, "mask_logit": mask_logit}
    terms, grad = ref.step(g.space, feeds["latent"], feeds["good"], feeds["mask"], feeds["stitched"],
                           feeds["lambdas"], onehot)
    return {"terms": terms, "grad": grad}


def finite_difference_errors(sess: _Session, feeds: dict[str, np.ndarray], grad: np.ndarray, *, eps: Sequence[float],
                             directions: int, seed: int) -> list[float]:
    """|finite difference − <g, d>| / ‖g‖ of an exported step graph along the gradient and random directions.

    Args:
        sess: the step graph's session.
        feeds: its inputs.
        grad: the graph's gradient at `feeds`.
        eps: steps along unit directions; each direction keeps its smallest error over them.
        directions: random directions (the gradient direction is always checked first).
        seed: seed of the random directions.

    Returns:
        One normalised error per direction.
    """
    latent = feeds["latent"].astype(np.float64)
    g = grad.astype(np.float64)
    g_norm = max(float(np.linalg.norm(g)), 1e-12)
    rng = np.random.default_rng(seed)
    dirs = [g / g_norm] + [rng.standard_normal(latent.shape) for _ in range(directions)]
    errors = []
    for d in dirs:
        d = d / np.linalg.norm(d)

        def f(x: np.ndarray) -> float:
            return float(sess({**feeds, "latent": x.astype(np.float32)})["terms"].astype(np.float64).sum())

        want, f0 = float((g * d).sum()), f(latent)
        best = np.inf
        for e in eps:
            up, down = f(latent + e * d), f(latent - e * d)
            # central, then one-sided: at a leaky-ReLU kink autograd takes one side's slope, the central
            # difference their mean, whatever the step (module docstring)
            slopes = ((up - down) / (2 * e), (up - f0) / e, (f0 - down) / e)
            best = min(best, *(abs(s - want) / g_norm for s in slopes))
        errors.append(best)
    return errors


def _check_one(g: GraphResult, sess: _Session, ref: TorchBackend, feeds: dict[str, np.ndarray], label: str,
               bounds: Bounds, seed: int) -> Check:
    got, want = sess(feeds), _torch_outputs(g, ref, feeds)
    errors = {k: rel_error(got[k], want[k]) for k in want}
    check = Check(file=g.path.name, inputs=label, batch=len(feeds[next(iter(feeds))]), errors=errors)
    for name, err in errors.items():
        bound = bounds.grad_rel if name == "grad" else bounds.output_rel
        if not err <= bound:
            check.passed = False
            check.notes.append(f"{name} rel error {err:.2e} > {bound:.0e}")
    if g.kind == "step":
        check.fd = finite_difference_errors(sess, feeds, got["grad"], eps=bounds.fd_eps,
                                            directions=bounds.fd_directions, seed=seed)
        worst = max(check.fd)
        if not worst <= bounds.fd_rel:
            check.passed = False
            check.notes.append(f"finite-difference error {worst:.2e} > {bounds.fd_rel:.0e}")
    return check


@dataclass
class VerifyReport:
    """What `verify_graphs` found; `to_json` is `verify.json`."""

    passed: bool
    bounds: Bounds
    checks: list[Check]
    worst: dict[str, float]
    environment: dict[str, str]

    def failures(self) -> list[str]:
        """One line per failed check."""
        return [f"{c.file} ({c.inputs}): {'; '.join(c.notes)}" for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"passed": self.passed, "bounds": asdict(self.bounds), "worst": self.worst,
                "metric": ("output/grad: max|onnx-torch|/max|torch|; "
                           "fd: min over steps of |central or one-sided diff - <g,d>| / ||g||"),
                "environment": self.environment, "checks": [asdict(c) for c in self.checks]}

    def to_json(self) -> str:
        """Indented JSON text."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def raise_if_failed(self) -> None:
        """Raise `VerifyError` listing every failed check.

        Raises:
            VerifyError: some check exceeded its bound.
        """
        if not self.passed:
            msg = "export verification failed: " + " | ".join(self.failures())
            raise VerifyError(msg)


def verify_graphs(G: nn.Module, E: nn.Module | None, D: nn.Module, graphs: Sequence[GraphResult], dims: ModelDims, *,
                  real: RealInputs | None = None, bounds: Bounds | None = None, seed: int = 1234) -> VerifyReport:
    """Check every exported graph against torch (and step graphs against finite differences).

    Args:
        G: generator, E: encoder (None: none exported), D: discriminator the graphs were exported from.
        graphs: the export results (paths, kinds, spaces, batches).
        dims: model sizes.
        real: real inputs from the dataset (None: random inputs only).
        bounds: pass/fail bounds (defaults: `Bounds()`).
        seed: seed of the random inputs and directions.

    Returns:
        The report (`passed` False when any bound is violated; call `raise_if_failed` to turn that into an
        error).
    """
    import onnxruntime as ort

    bounds = bounds or Bounds()
    ref = TorchBackend(G, E, D)
    checks = []
    for i, g in enumerate(graphs):
        sess = _Session(g.path)
        sets = [("random", _random_feeds(g, dims, seed + i))]
        if real is not None:
            sets.append(("real", _real_feeds(g, dims, ref, real, seed + i)))
        for label, feeds in sets:
            if feeds is None:
                continue
            check = _check_one(g, sess, ref, feeds, label, bounds, seed + i)
            checks.append(check)
            fd = f", fd {max(check.fd):.1e}" if check.fd else ""
            errs = ", ".join(f"{k} {v:.1e}" for k, v in check.errors.items())
            log.info("  verify %-24s %-6s %s%s  %s", g.path.name, label, errs, fd, "ok" if check.passed else "FAIL")
    worst = {
        "output_rel": max((v for c in checks for k, v in c.errors.items() if k != "grad"), default=0.0),
        "grad_rel": max((c.errors["grad"] for c in checks if "grad" in c.errors), default=0.0),
        "fd_rel": max((e for c in checks for e in c.fd), default=0.0),
    }
    env = {"onnxruntime": ort.__version__, "torch": torch.__version__, "machine": platform.machine(),
           "python": platform.python_version()}
    return VerifyReport(passed=all(c.passed for c in checks), bounds=bounds, checks=checks, worst=worst,
                        environment=env)
