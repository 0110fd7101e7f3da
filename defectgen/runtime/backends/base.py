"""The `Backend` protocol and the shared graph-running logic (the registry is `backends.registry`).

A backend runs the bundle's graphs on numpy float32 arrays. Every engine (ONNX Runtime with its CPU, CUDA or
TensorRT provider; TensorRT itself) subclasses `GraphBackend` and supplies one method, `_run(file, feeds)`;
input checks, the padding of fixed-batch step graphs, and chunking live here once.

    backend = load_backend(bundle, "auto")     # tensorrt > ort-trt > ort-cuda > ort-cpu, by availability
    terms, grad = backend.step("wplus", latent, good, mask, stitched, bundle.lambda_vector())

Engines are imported lazily: importing this module loads neither onnxruntime nor tensorrt (and never torch).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Protocol, runtime_checkable

import numpy as np

from defectgen.errors import BundleError, DefectgenError, JobError
from defectgen.runtime.bundle.loader import Bundle
from defectgen.runtime.bundle.manifest import LOSS_TERMS


class BackendUnavailable(DefectgenError):
    """The requested backend cannot run here (a package, provider or GPU is missing); says what is missing."""


@runtime_checkable
class Backend(Protocol):
    """What the inversion loop needs from an engine. All arrays are numpy float32, batch first.

    Shapes (R = resolution, L = num_ws, W = w_dim, Z = z_dim, T = number of types, K = len(LOSS_TERMS)):
    image/good/stitched (B,3,R,R), mask (B,1,R,R), latent (B,L,W) | (B,W) | (B,Z) for wplus | w | z.
    """

    name: str  # registry name, e.g. "ort-cpu"

    def encode(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Encoder: (image, mask) -> w+ (B, L, W)."""
        ...

    def map(self, z: np.ndarray, type_onehot: np.ndarray) -> np.ndarray:
        """Mapping network: (z (B,Z), type_onehot (B,T)) -> w (B, W)."""
        ...

    def synthesize(self, space: str, latent: np.ndarray, type_onehot: np.ndarray | None = None,
                   good: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Generator: latent -> (image (B,3,R,R) in [-1,1], mask_logit (B,1,R,R)); z needs `type_onehot`, a
        patch-mode bundle the good windows `good` (B,3,R,R) it draws its defect layer over.
        """
        ...

    def step(self, space: str, latent: np.ndarray, good: np.ndarray, mask: np.ndarray, stitched: np.ndarray,
             lambdas: np.ndarray, type_onehot: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One forward+backward: -> (terms (B,K) already times λ, grad of the summed objective wrt latent)."""
        ...

    def step_batches(self, space: str) -> list[int]:
        """Fixed batch sizes of the exported step graphs for `space` (any batch size is accepted by `step`)."""
        ...

    def critic(self, image: np.ndarray, mask: np.ndarray, type_onehot: np.ndarray) -> np.ndarray:
        """D's realness score of (composite, mask {0,1}) windows of the given types -> (B,); higher: more real.
        Only bundles with a critic graph (`Bundle.has_critic`) have one.
        """
        ...

    def close(self) -> None:
        """Free sessions, engines and device buffers. Safe to call twice."""
        ...


def plan_chunks(n: int, batches: list[int]) -> list[tuple[int, int, int]]:
    """Split n samples over fixed-batch graphs: `[(start, count, graph_batch), ...]`.

    Full chunks use the largest exported batch; the remainder uses the smallest exported batch that holds it
    (padded). E.g. batches [1, 4, 8]: n=3 -> [(0, 3, 4)], n=11 -> [(0, 8, 8), (8, 3, 4)].
    """
    if not batches:
        msg = "no step batch sizes exported"
        raise BundleError(msg)
    top, plan, start = max(batches), [], 0
    while n - start > top:
        plan.append((start, top, top))
        start += top
    if n - start > 0:
        plan.append((start, n - start, min(b for b in batches if b >= n - start)))
    return plan


def pad_rows(x: np.ndarray, size: int) -> np.ndarray:
    """Pad a batch to `size` rows by repeating its last row.

    Padded rows' results are thrown away; repeating a real row keeps them finite whenever the real ones are.
    """
    if len(x) == size:
        return x
    return np.concatenate([x, np.repeat(x[-1:], size - len(x), axis=0)])


class GraphBackend(ABC):
    """Base of every backend: implements the `Backend` protocol on top of `_run(file, feeds)`.

    Subclasses set `name` and implement `_run`; they may set `max_symbolic_batch` when their engines were
    built for a maximum batch (TensorRT optimisation profiles), and encoder/mapping/synthesis calls are then
    chunked to it.
    """

    name = "base"
    max_symbolic_batch: int | None = None

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        r = bundle.resolution
        self._image_shape, self._mask_shape = (3, r, r), (1, r, r)

    @abstractmethod
    def _run(self, file: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one graph file of the bundle on float32 feeds; return every output by name."""

    def close(self) -> None:  # noqa: B027 - optional hook, most engines free themselves
        """Free engine resources (nothing to free in the base)."""

    def __enter__(self) -> GraphBackend:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, bundle={str(self.bundle.source)!r})"

    # ---- the protocol ------------------------------------------------------------------------------------
    def encode(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feeds = self._batch({"image": (image, self._image_shape), "mask": (mask, self._mask_shape)})
        return self._run_symbolic(self.bundle.graph_file("encoder"), feeds)["wplus"]

    def map(self, z: np.ndarray, type_onehot: np.ndarray) -> np.ndarray:
        feeds = self._batch({"z": (z, (self.bundle.z_dim,)), "type_onehot": (type_onehot, self._onehot_shape)})
        return self._run_symbolic(self.bundle.graph_file("mapping"), feeds)["w"]

    def synthesize(self, space: str, latent: np.ndarray, type_onehot: np.ndarray | None = None,
                   good: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        specs = self._latent_specs(space, latent, type_onehot)
        if self.bundle.patch is not None:
            if good is None:
                msg = "a patch-mode bundle draws over the good window: synthesize needs `good` (B, 3, R, R)"
                raise JobError(msg)
            specs["good"] = (good, self._image_shape)
        feeds = self._batch(specs)
        out = self._run_symbolic(self.bundle.graph_file("synthesis", space), feeds)
        return out["image"], out["mask_logit"]

    def step(self, space: str, latent: np.ndarray, good: np.ndarray, mask: np.ndarray, stitched: np.ndarray,
             lambdas: np.ndarray, type_onehot: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        specs = self._latent_specs(space, latent, type_onehot)
        specs.update({"good": (good, self._image_shape), "mask": (mask, self._mask_shape),
                      "stitched": (stitched, self._image_shape)})
        feeds = self._batch(specs)
        lam = _as_f32("lambdas", lambdas)
        if lam.shape != (len(LOSS_TERMS),):
            msg = f"lambdas must have shape ({len(LOSS_TERMS)},) in order {LOSS_TERMS}, got {lam.shape}"
            raise JobError(msg)
        n = len(feeds["latent"])
        terms = np.empty((n, len(LOSS_TERMS)), dtype=np.float32)
        grad = np.empty_like(feeds["latent"])
        for start, count, b in plan_chunks(n, self.step_batches(space)):
            chunk = {k: pad_rows(v[start:start + count], b) for k, v in feeds.items()}
            out = self._run(self.bundle.step_file(space, b), {**chunk, "lambdas": lam})
            terms[start:start + count] = out["terms"][:count]
            grad[start:start + count] = out["grad"][:count]
        return terms, grad

    def step_batches(self, space: str) -> list[int]:
        return self.bundle.step_batches(space)

    def critic(self, image: np.ndarray, mask: np.ndarray, type_onehot: np.ndarray) -> np.ndarray:
        feeds = self._batch({"image": (image, self._image_shape), "mask": (mask, self._mask_shape),
                             "type_onehot": (type_onehot, self._onehot_shape)})
        return self._run_symbolic(self.bundle.graph_file("critic"), feeds)["score"][:, 0]

    # ---- helpers -----------------------------------------------------------------------------------------
    @property
    def _onehot_shape(self) -> tuple[int]:
        return (len(self.bundle.defect_types),)

    def _latent_specs(self, space: str, latent: np.ndarray,
                      type_onehot: np.ndarray | None) -> dict[str, tuple[np.ndarray, tuple[int, ...]]]:
        specs = {"latent": (latent, self.bundle.latent_shape(space))}
        if space == "z":
            if type_onehot is None:
                msg = "latent space 'z' needs type_onehot (the mapping network is conditioned on the defect type)"
                raise JobError(msg)
            specs["type_onehot"] = (type_onehot, self._onehot_shape)
        return specs

    @staticmethod
    def _batch(specs: dict[str, tuple[np.ndarray, tuple[int, ...]]]) -> dict[str, np.ndarray]:
        """float32 contiguous arrays with checked per-sample shapes and one common batch size."""
        out, n = {}, None
        for name, (x, tail) in specs.items():
            a = _as_f32(name, x)
            if a.ndim != len(tail) + 1 or a.shape[1:] != tail:
                msg = f"{name} must have shape (B, {', '.join(map(str, tail))}), got {a.shape}"
                raise JobError(msg)
            if n is not None and len(a) != n:
                msg = f"{name} has batch {len(a)}, other inputs have batch {n}"
                raise JobError(msg)
            n = len(a)
            out[name] = a
        if not n:
            msg = "empty batch: nothing to run"
            raise JobError(msg)
        return out

    def _run_symbolic(self, file: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n, cap = len(next(iter(feeds.values()))), self.max_symbolic_batch
        if cap is None or n <= cap:
            return self._run(file, feeds)
        parts = [self._run(file, {k: v[i:i + cap] for k, v in feeds.items()}) for i in range(0, n, cap)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _as_f32(name: str, x: np.ndarray) -> np.ndarray:
    try:
        return np.ascontiguousarray(x, dtype=np.float32)
    except (TypeError, ValueError) as e:
        msg = f"{name} must be a float32 array: {e}"
        raise JobError(msg) from None
