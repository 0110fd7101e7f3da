"""One pure function per graph kind, driven by the `GRAPHS` table (the table drives export and verification).

| kind | file | batch | how |
|---|---|---|---|
| encoder | `encoder.onnx` | symbolic `B` | `torch.onnx.export(dynamo=True)` of `E(image, mask)` |
| mapping | `mapping.onnx` | symbolic `B` | same, `G.mapping(z, type_onehot)` |
| synthesis | `synthesis_<space>.onnx` | symbolic `B` | same, `G.synthesis(to_wplus(latent)[, good])` |
| step | `step_<space>_b<B>.onnx` | fixed | `make_fx` of `objective.make_step`, then dynamo on the GraphModule |
| critic | `critic.onnx` | symbolic `B` | same, `objective.critic_score(D, image, mask, type_onehot)`; patch only |

Every function takes the frozen nets, the model sizes and an output path, writes one finished ONNX file
(`onnx_tools.finish_graph`: simplified, checked, policy-clean, with metadata) and returns a `GraphResult`. The
`@logged` decorator prints one progress line per graph (time, size, node count, top ops) and re-raises
failures with the graph's name. Dependencies are explicit: nothing here reads a checkpoint or the manifest.
A layered (patch) G (`ModelDims.layered`) adds the good window as the synthesis graphs' second input; a bundle
without an encoder simply skips the `encoder` row (`plan(..., encoder=False)`); only a patch bundle has a
critic (it ranks G's target proposals; `plan(..., critic=True)`).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import Tensor, nn
from torch.fx.experimental.proxy_tensor import make_fx

from defectgen import __version__
from defectgen.export import onnx_tools
from defectgen.export.objective import (
    check_space,
    critic_score,
    freeze,
    is_layered,
    make_step,
    synthesize,
    to_wplus,
    w_avg_table,
)
from defectgen.runtime.bundle.manifest import FORMAT, FORMAT_VERSION, LOSS_TERMS

log = logging.getLogger("defectgen.export")

EXAMPLE_BATCH = 2  # batch of the example inputs of symbolic-batch graphs (not 1: exporters specialise size 1)


@dataclass(frozen=True)
class ModelDims:
    """Sizes every graph's I/O is built from (the manifest's `resolution`, `z_dim`, ...)."""

    resolution: int  # R: images are (B, 3, R, R)
    z_dim: int  # Z
    w_dim: int  # W
    num_ws: int  # L: layers of w+
    num_types: int  # T: length of type_onehot ("good" + defect types)
    layered: bool = False  # a patch G drawing over the good window: synthesis graphs take `good` too

    def latent_shape(self, space: str, batch: int) -> tuple[int, ...]:
        """Shape of the latent of `space` for `batch` samples."""
        return {"wplus": (batch, self.num_ws, self.w_dim), "w": (batch, self.w_dim), "z": (batch, self.z_dim)}[space]


@dataclass
class GraphResult:
    """What exporting one graph produced."""

    kind: str  # a GRAPHS key
    path: Path
    space: str | None = None
    batch: int | None = None  # fixed batch of a step graph
    ops: dict[str, int] = field(default_factory=dict)  # op histogram
    nodes: int = 0
    bytes: int = 0
    seconds: float = 0.0
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-ready record for the verify report / manifest extras."""
        return {"kind": self.kind, "space": self.space, "batch": self.batch, "bytes": self.bytes,
                "nodes": self.nodes, "seconds": round(self.seconds, 2), "ops": self.ops}


def model_dims(G: nn.Module) -> ModelDims:
    """Read the sizes off a generator (its config where it has one, else its buffers).

    Args:
        G: the generator.

    Returns:
        The model sizes.
    """
    cfg = getattr(G, "cfg", None) or getattr(G, "config", None)
    table = w_avg_table(G)
    res = getattr(cfg, "res", None) or getattr(cfg, "resolution", None) or getattr(G, "res", None)
    z_dim = getattr(cfg, "z_dim", None) or getattr(G, "z_dim", None)
    if res is None or z_dim is None:
        msg = f"cannot read resolution/z_dim from {type(G).__name__} (expected G.cfg.res and G.cfg.z_dim)"
        raise AttributeError(msg)
    return ModelDims(resolution=int(res), z_dim=int(z_dim), w_dim=int(table.shape[1]), num_ws=int(G.num_ws),
                     num_types=int(table.shape[0]), layered=is_layered(G))


def example_inputs(kind: str, dims: ModelDims, *, space: str | None = None, batch: int = EXAMPLE_BATCH,
                   seed: int = 0) -> dict[str, Tensor]:
    """Deterministic inputs of a graph kind, keyed by the contract's input names (docs/bundle.md).

    Args:
        kind: a GRAPHS key.
        dims: model sizes.
        space: latent space for synthesis/step.
        batch: batch size.
        seed: random seed.

    Returns:
        Ordered `{input name: tensor}`.
    """
    g = torch.Generator().manual_seed(seed)
    r, b = dims.resolution, batch
    onehot = torch.nn.functional.one_hot(torch.arange(b) % dims.num_types, dims.num_types).float()
    mask = torch.zeros(b, 1, r, r)
    mask[..., r // 4: r // 2 + 1, r // 3: 2 * r // 3 + 1] = 1.0

    def img() -> Tensor:
        return torch.rand(b, 3, r, r, generator=g) * 2 - 1

    if kind == "encoder":
        return {"image": img(), "mask": mask}
    if kind == "critic":
        return {"image": img(), "mask": mask, "type_onehot": onehot}
    if kind == "mapping":
        return {"z": torch.randn(b, dims.z_dim, generator=g), "type_onehot": onehot}
    latent = torch.randn(*dims.latent_shape(check_space(space or ""), b), generator=g)
    if space != "z":
        latent = latent * 0.5
    extra = {"type_onehot": onehot} if space == "z" else {}
    if kind == "synthesis":
        return {"latent": latent, **({"good": img()} if dims.layered else {}), **extra}
    if kind == "step":
        lam = torch.ones(len(LOSS_TERMS))
        return {"latent": latent, "good": img(), "mask": mask, "stitched": img(), "lambdas": lam, **extra}
    msg = f"unknown graph kind {kind!r}; choose from {', '.join(GRAPHS)}"
    raise ValueError(msg)


# ---- wrappers: each exposes exactly the contract's inputs and outputs -------------------------------------
class _Encoder(nn.Module):
    def __init__(self, E: nn.Module) -> None:
        super().__init__()
        self.E = E

    def forward(self, image: Tensor, mask: Tensor) -> Tensor:
        return self.E(image, mask)


class _Mapping(nn.Module):
    def __init__(self, G: nn.Module) -> None:
        super().__init__()
        self.G = G

    def forward(self, z: Tensor, type_onehot: Tensor) -> Tensor:
        return self.G.mapping(z, type_onehot)


class _Critic(nn.Module):
    def __init__(self, D: nn.Module) -> None:
        super().__init__()
        self.D = D

    def forward(self, image: Tensor, mask: Tensor, type_onehot: Tensor) -> Tensor:
        return critic_score(self.D, image, mask, type_onehot)


class _Synthesis(nn.Module):
    def __init__(self, G: nn.Module, space: str) -> None:
        super().__init__()
        self.G, self.space = G, space

    def forward(self, latent: Tensor, type_onehot: Tensor | None = None) -> tuple[Tensor, Tensor]:
        image, mask_logit = self.G.synthesis(to_wplus(self.G, latent, self.space, type_onehot))
        return image, mask_logit


class _LayeredSynthesis(_Synthesis):
    """Inputs in the contract's order for a patch G: (latent, good[, type_onehot])."""

    def forward(self, latent: Tensor, good: Tensor,  # type: ignore[override]
                type_onehot: Tensor | None = None) -> tuple[Tensor, Tensor]:
        image, mask_logit = synthesize(self.G, to_wplus(self.G, latent, self.space, type_onehot), good)
        return image, mask_logit


class _Traced(nn.Module):
    """A make_fx GraphModule as an nn.Module with a tuple output (what the dynamo exporter wants)."""

    def __init__(self, gm: nn.Module) -> None:
        super().__init__()
        self.gm = gm

    def forward(self, *args: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.gm(*args))


# ---- shared plumbing ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's chatter (progress prints, torchvision-missing warnings); errors still raise.

    Also runs torch single-threaded meanwhile: tracing is Python-bound on example tensors of batch <= 8, and on a
    busy 2-core box OpenMP's spinning worker threads made it 1.4x slower (49 s vs 34 s for a 16 px step graph).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.set_num_threads(threads)
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _export(module: nn.Module, inputs: dict[str, Tensor], output_names: list[str], opset: int,
            dynamic_batch: bool) -> onnx.ModelProto:
    """torch.onnx.export (dynamo) to an in-memory ModelProto, batch dim symbolic (`B`) when asked."""
    dynamic = None
    if dynamic_batch:
        batch = torch.export.Dim("B", min=1, max=4096)
        dynamic = {name: {0: batch} for name in inputs}
    with _quiet_exporter():
        program = torch.onnx.export(module.eval(), tuple(inputs.values()), dynamo=True, opset_version=opset,
                                    input_names=list(inputs), output_names=output_names, dynamic_shapes=dynamic,
                                    optimize=False, verbose=False)
    model = program.model_proto
    if dynamic_batch:
        _name_batch_dim(model, list(inputs) + output_names)
    return model


def _name_batch_dim(model: onnx.ModelProto, names: list[str]) -> None:
    """The exporter names the symbolic batch dim after its internal symbol (`s0`, ...); the contract says `B`."""
    for v in list(model.graph.input) + list(model.graph.output):
        if v.name in names:
            dim = v.type.tensor_type.shape.dim[0]
            if dim.HasField("dim_param") or not dim.HasField("dim_value"):
                dim.dim_param = "B"


def _metadata(kind: str, dims: ModelDims, *, space: str | None = None, batch: int | None = None,
              opset: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The manifest subset every graph carries in `metadata_props` (a lone graph file still says what it is)."""
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "defectgen_version": __version__,
            "role": kind, "resolution": str(dims.resolution), "z_dim": str(dims.z_dim), "w_dim": str(dims.w_dim),
            "num_ws": str(dims.num_ws), "num_types": str(dims.num_types), "opset": str(opset),
            "image_range": "[-1, 1] float32 NCHW RGB", "mask_range": "{0, 1} float32 N1HW"}
    if space is not None:
        meta["space"] = space
    if batch is not None:
        meta["batch"] = str(batch)
    if kind == "step":
        meta["loss_terms"] = json.dumps(list(LOSS_TERMS))
    meta.update(extra or {})
    return meta


def _finish(kind: str, model: onnx.ModelProto, path: Path, meta: dict[str, str], *, fixed: bool,
            space: str | None = None, batch: int | None = None) -> GraphResult:
    model = onnx_tools.finish_graph(model, meta=meta, fixed_shapes=fixed)
    onnx_tools.save_model(model, path)
    ins, outs = onnx_tools.io_signature(model)
    return GraphResult(kind=kind, path=path, space=space, batch=batch, ops=onnx_tools.op_histogram(model),
                       nodes=len(model.graph.node), bytes=path.stat().st_size, inputs=ins, outputs=outs)


def logged(fn: Callable[..., GraphResult]) -> Callable[..., GraphResult]:
    """Time one graph export, log a progress line with size and top ops, and re-raise failures with context."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> GraphResult:
        name = Path(kwargs.get("path", "?")).name
        t0 = time.perf_counter()
        try:
            result = fn(*args, **kwargs)
        except Exception as e:
            log.error("  %-24s FAILED after %.1f s: %s: %s", name, time.perf_counter() - t0, type(e).__name__, e)
            msg = f"exporting {name} failed: {type(e).__name__}: {e}"
            raise RuntimeError(msg) from e
        result.seconds = time.perf_counter() - t0
        top = ", ".join(f"{op} {n}" for op, n in list(result.ops.items())[:6])
        log.info("  %-24s %6.1f s %8.2f MB %5d nodes  (%s)", name, result.seconds, result.bytes / 1e6,
                 result.nodes, top)
        return result

    return wrapper


# ---- one function per graph kind ---------------------------------------------------------------------------
@logged
def export_encoder(G: nn.Module, E: nn.Module, D: nn.Module | None, *, dims: ModelDims, path: Path, opset: int,
                   space: str | None = None, batch: int | None = None) -> GraphResult:
    """`encoder.onnx`: (image, mask) -> wplus, symbolic batch. Returns the written graph's result."""
    freeze(E)
    inputs = example_inputs("encoder", dims)
    model = _export(_Encoder(E), inputs, ["wplus"], opset, dynamic_batch=True)
    return _finish("encoder", model, path, _metadata("encoder", dims, opset=opset), fixed=False)


@logged
def export_mapping(G: nn.Module, E: nn.Module | None, D: nn.Module | None, *, dims: ModelDims, path: Path,
                   opset: int, space: str | None = None, batch: int | None = None) -> GraphResult:
    """`mapping.onnx`: (z, type_onehot) -> w, symbolic batch. Returns the written graph's result."""
    freeze(G)
    inputs = example_inputs("mapping", dims)
    model = _export(_Mapping(G), inputs, ["w"], opset, dynamic_batch=True)
    return _finish("mapping", model, path, _metadata("mapping", dims, opset=opset), fixed=False)


@logged
def export_synthesis(G: nn.Module, E: nn.Module | None, D: nn.Module | None, *, dims: ModelDims, path: Path,
                     opset: int, space: str | None = None, batch: int | None = None) -> GraphResult:
    """`synthesis_<space>.onnx`: latent [, good] [, type_onehot] -> (image, mask_logit), symbolic batch."""
    space = check_space(space or "")
    freeze(G)
    inputs = example_inputs("synthesis", dims, space=space)
    wrapper = (_LayeredSynthesis if dims.layered else _Synthesis)(G, space)
    model = _export(wrapper, inputs, ["image", "mask_logit"], opset, dynamic_batch=True)
    meta = _metadata("synthesis", dims, space=space, opset=opset)
    return _finish("synthesis", model, path, meta, fixed=False, space=space)


@logged
def export_step(G: nn.Module, E: nn.Module | None, D: nn.Module, *, dims: ModelDims, path: Path, opset: int,
                space: str | None = None, batch: int | None = None) -> GraphResult:
    """`step_<space>_b<B>.onnx`: forward + backward of the objective at a fixed batch (make_fx + dynamo)."""
    space = check_space(space or "")
    if batch is None or batch < 1:
        msg = f"a step graph needs a positive batch size, got {batch!r}"
        raise ValueError(msg)
    inputs = example_inputs("step", dims, space=space, batch=batch)
    step = make_step(G, E, D, space)
    with _quiet_exporter():
        gm = make_fx(lambda *args: step(*args))(*inputs.values())  # lambda: exact arity
    model = _export(_Traced(gm), inputs, ["terms", "grad"], opset, dynamic_batch=False)
    meta = _metadata("step", dims, space=space, batch=batch, opset=opset)
    return _finish("step", model, path, meta, fixed=True, space=space, batch=batch)


@logged
def export_critic(G: nn.Module | None, E: nn.Module | None, D: nn.Module, *, dims: ModelDims, path: Path,
                  opset: int, space: str | None = None, batch: int | None = None) -> GraphResult:
    """`critic.onnx`: (image, mask, type_onehot) -> score [B, 1], D's per-sample realness, symbolic batch."""
    freeze(D)
    inputs = example_inputs("critic", dims)
    model = _export(_Critic(D), inputs, ["score"], opset, dynamic_batch=True)
    return _finish("critic", model, path, _metadata("critic", dims, opset=opset), fixed=False)


@dataclass(frozen=True)
class GraphKind:
    """One row of the export table."""

    fn: Callable[..., GraphResult]  # export function (all share one keyword signature)
    filename: Callable[[str | None, int | None], str]  # (space, batch) -> file name in the bundle
    per_space: bool  # one graph per latent space
    per_batch: bool  # one graph per fixed batch size
    outputs: tuple[str, ...]  # output names (inputs: `example_inputs`)


GRAPHS: dict[str, GraphKind] = {
    "encoder": GraphKind(export_encoder, lambda s, b: "encoder.onnx", False, False, ("wplus",)),
    "mapping": GraphKind(export_mapping, lambda s, b: "mapping.onnx", False, False, ("w",)),
    "synthesis": GraphKind(export_synthesis, lambda s, b: f"synthesis_{s}.onnx", True, False,
                           ("image", "mask_logit")),
    "step": GraphKind(export_step, lambda s, b: f"step_{s}_b{b}.onnx", True, True, ("terms", "grad")),
    "critic": GraphKind(export_critic, lambda s, b: "critic.onnx", False, False, ("score",)),
}


def plan(spaces: list[str], batches: list[int], *, encoder: bool = True,
         critic: bool = False) -> list[tuple[str, str | None, int | None, str]]:
    """Every graph a bundle with these spaces and step batches holds: `(kind, space, batch, file name)`.

    Args:
        spaces: latent spaces.
        batches: fixed step batch sizes.
        encoder: include the encoder graph (False: a bundle that never starts from an encoder).
        critic: include D's score (a patch bundle: it ranks G's target proposals).

    Returns:
        The list in export order (cheap forward graphs first).
    """
    out: list[tuple[str, str | None, int | None, str]] = []
    for kind, spec in GRAPHS.items():
        if (kind == "encoder" and not encoder) or (kind == "critic" and not critic):
            continue
        for space in (spaces if spec.per_space else [None]):
            for batch in (batches if spec.per_batch else [None]):
                out.append((kind, space, batch, spec.filename(space, batch)))
    return out


def export_graph(kind: str, G: nn.Module, E: nn.Module | None, D: nn.Module, *, dims: ModelDims, path: Path, opset: int,
                 space: str | None = None, batch: int | None = None) -> GraphResult:
    """Dispatch one graph export through the table.

    Args:
        kind: a GRAPHS key.
        G: generator, E: encoder, D: discriminator (frozen here).
        dims: model sizes.
        path: output file.
        opset: ONNX opset.
        space: latent space (synthesis, step).
        batch: fixed batch (step).

    Returns:
        The result of the graph's export function.

    Raises:
        ValueError: unknown kind.
    """
    if kind not in GRAPHS:
        from defectgen.errors import choice_error

        raise ValueError(choice_error("graph kind", kind, list(GRAPHS)))
    return GRAPHS[kind].fn(G, E, D, dims=dims, path=path, opset=opset, space=space, batch=batch)
