"""A tiny but real bundle built with `onnx.helper` (no torch), for runtime tests.

Graphs follow docs/bundle.md exactly (names, shapes, symbolic batch "B", fixed-batch step graphs), with toy math:

- encoder:    wplus = tanh(flat([image, mask]) @ E)                    reshaped to (B, L, W)
- mapping:    w = tanh(z @ A + onehot @ C)
- synthesis:  image = tanh(flat(w+) @ Gi), mask_logit = flat(w+) @ Gm  (w: broadcast to L layers; z: mapped first)
- step:       term_k = λ_k · mean_n (c_n − T_kn)²,  T = tanh(x @ P) (B, K, N),
              x = flat([good, mask, stitched] [, onehot])
              grad   = 2/N · Σ_k λ_k (c − T_k)   (analytic, built in-graph)
  so the objective is a quadratic with the known minimum c* = Σ_k λ_k T_k / Σ_k λ_k (`ToyModel.optimum`).
  With `nan_above=t` the graph also adds `0 · sqrt(t − max_n c_n)` to a term and the grad, which turns that
  sample's outputs NaN once any latent entry passes `t` (to test the runtime's NaN guard).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from defectgen.data.part_size import PART_SIZE_RULE
from defectgen.runtime.bundle.manifest import LOSS_TERMS, FileEntry, Manifest, TensorSpec, finalize_manifest

TYPES = ["good", "crack", "hole"]
K = len(LOSS_TERMS)
OPSET = 18


@dataclass
class ToyModel:
    """The toy's weights plus numpy references of every graph."""

    res: int = 8
    z_dim: int = 4
    w_dim: int = 4
    num_ws: int = 3
    seed: int = 0
    types: list[str] = field(default_factory=lambda: list(TYPES))

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        r2, nw = self.res * self.res, self.num_ws * self.w_dim
        t = len(self.types)

        def mat(*shape: int, scale: float = 1.0) -> np.ndarray:
            return (rng.standard_normal(shape) * scale / np.sqrt(shape[0])).astype(np.float32)

        self.E = mat(4 * r2, nw)
        self.A, self.C = mat(self.z_dim, self.w_dim), mat(t, self.w_dim)
        self.Gi, self.Gm = mat(nw, 3 * r2), mat(nw, r2)
        self.P = {s: mat(7 * r2 + (t if s == "z" else 0), K * self.n_latent(s), scale=2.0) for s in ("wplus", "w", "z")}
        self.w_avg = {ty: np.tanh(self.C[i]).astype(np.float32) for i, ty in enumerate(self.types)}
        self.Dc, self.Dt = mat(4 * r2, 1), mat(t, 1)  # drawn last: the other weights stay as they were

    def n_latent(self, space: str) -> int:
        return {"wplus": self.num_ws * self.w_dim, "w": self.w_dim, "z": self.z_dim}[space]

    def latent_shape(self, space: str) -> tuple[int, ...]:
        return {"wplus": (self.num_ws, self.w_dim), "w": (self.w_dim,), "z": (self.z_dim,)}[space]

    # ---- numpy references ----
    def encode(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        x = np.concatenate([image, mask], 1).reshape(len(image), -1)
        return np.tanh(x @ self.E).reshape(-1, self.num_ws, self.w_dim)

    def critic(self, image: np.ndarray, mask: np.ndarray, onehot: np.ndarray) -> np.ndarray:
        x = np.concatenate([image, mask], 1).reshape(len(image), -1)
        return (x @ self.Dc + onehot @ self.Dt)[:, 0]

    def map(self, z: np.ndarray, onehot: np.ndarray) -> np.ndarray:
        return np.tanh(z @ self.A + onehot @ self.C)

    def targets(self, space: str, good: np.ndarray, mask: np.ndarray, stitched: np.ndarray,
                onehot: np.ndarray | None = None) -> np.ndarray:
        parts = [good.reshape(len(good), -1), mask.reshape(len(good), -1), stitched.reshape(len(good), -1)]
        if space == "z":
            parts.append(onehot)
        return np.tanh(np.concatenate(parts, 1) @ self.P[space]).reshape(len(good), K, -1)

    def optimum(self, space: str, good: np.ndarray, mask: np.ndarray, stitched: np.ndarray, lambdas: np.ndarray,
                onehot: np.ndarray | None = None) -> np.ndarray:
        t = self.targets(space, good, mask, stitched, onehot)
        c = (lambdas[None, :, None] * t).sum(1) / lambdas.sum()
        return c.reshape(len(good), *self.latent_shape(space)).astype(np.float32)

    def terms(self, space: str, latent: np.ndarray, good: np.ndarray, mask: np.ndarray, stitched: np.ndarray,
              lambdas: np.ndarray, onehot: np.ndarray | None = None) -> np.ndarray:
        t = self.targets(space, good, mask, stitched, onehot)
        d = latent.reshape(len(latent), 1, -1) - t
        return (d**2).mean(2) * lambdas[None]

    def inputs(self, n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """Random (good, mask, stitched, types) of batch n."""
        rng = np.random.default_rng(seed)
        r = self.res
        good = rng.uniform(-1, 1, (n, 3, r, r)).astype(np.float32)
        mask = (rng.uniform(0, 1, (n, 1, r, r)) > 0.7).astype(np.float32)
        stitched = np.where(mask > 0, rng.uniform(-1, 1, (n, 3, r, r)), good).astype(np.float32)
        types = [self.types[1 + i % (len(self.types) - 1)] for i in range(n)]
        return good, mask, stitched, types


class _Graph:
    """Minimal ONNX graph builder: named nodes, constants as initializers."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def const(self, value: np.ndarray | list[int] | float, dtype: type = np.float32) -> str:
        self.n += 1
        name = f"c{self.n}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def ints(self, value: list[int]) -> str:
        return self.const(value, np.int64)

    def op(self, op: str, *inputs: str, **attrs: object) -> str:
        self.n += 1
        out = f"{op.lower()}{self.n}"
        self.nodes.append(helper.make_node(op, list(inputs), [out], **attrs))
        return out

    def output(self, src: str, name: str) -> None:
        self.nodes.append(helper.make_node("Identity", [src], [name]))

    def save(self, path: Path, inputs: list[tuple[str, list]], outputs: list[tuple[str, list]]) -> None:
        vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs]
        vo = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs]
        graph = helper.make_graph(self.nodes, path.stem, vi, vo, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        onnx.save(model, path)


def _flat(g: _Graph, x: str, n: int) -> str:
    return g.op("Reshape", x, g.ints([-1, n]))


def _mapping_nodes(g: _Graph, m: ToyModel, z: str, onehot: str) -> str:
    return g.op("Tanh", g.op("Add", g.op("MatMul", z, g.const(m.A)), g.op("MatMul", onehot, g.const(m.C))))


def _synthesis_nodes(g: _Graph, m: ToyModel, wflat: str, layered: bool = False) -> None:
    r = m.res
    img = g.op("Reshape", g.op("Tanh", g.op("MatMul", wflat, g.const(m.Gi))), g.ints([-1, 3, r, r]))
    if layered:  # a patch G draws over the good window: here half of it, half the generated layer
        img = g.op("Mul", g.op("Add", img, "good"), g.const(0.5))
    g.output(img, "image")
    g.output(g.op("Reshape", g.op("MatMul", wflat, g.const(m.Gm)), g.ints([-1, 1, r, r])), "mask_logit")


def _w_to_wplus_flat(g: _Graph, m: ToyModel, w: str) -> str:
    # broadcast (B, W) to all L layers, flattened: (B, L*W) = w @ [I I ... I]
    return g.op("MatMul", w, g.const(np.tile(np.eye(m.w_dim, dtype=np.float32), (1, m.num_ws))))


def build_encoder(m: ToyModel, path: Path) -> None:
    g, r = _Graph(), m.res
    x = _flat(g, g.op("Concat", "image", "mask", axis=1), 4 * r * r)
    wp = g.op("Tanh", g.op("MatMul", x, g.const(m.E)))
    g.output(g.op("Reshape", wp, g.ints([-1, m.num_ws, m.w_dim])), "wplus")
    g.save(path, [("image", ["B", 3, r, r]), ("mask", ["B", 1, r, r])], [("wplus", ["B", m.num_ws, m.w_dim])])


def build_mapping(m: ToyModel, path: Path) -> None:
    g = _Graph()
    g.output(_mapping_nodes(g, m, "z", "type_onehot"), "w")
    g.save(path, [("z", ["B", m.z_dim]), ("type_onehot", ["B", len(m.types)])], [("w", ["B", m.w_dim])])


def build_synthesis(m: ToyModel, space: str, path: Path, layered: bool = False) -> None:
    g, r, t = _Graph(), m.res, len(m.types)
    if space == "wplus":
        wflat = _flat(g, "latent", m.num_ws * m.w_dim)
    elif space == "w":
        wflat = _w_to_wplus_flat(g, m, "latent")
    else:
        wflat = _w_to_wplus_flat(g, m, _mapping_nodes(g, m, "latent", "type_onehot"))
    _synthesis_nodes(g, m, wflat, layered)
    ins = [("latent", ["B", *m.latent_shape(space)])] + ([("good", ["B", 3, r, r])] if layered else []) + (
        [("type_onehot", ["B", t])] if space == "z" else [])
    g.save(path, ins, [("image", ["B", 3, r, r]), ("mask_logit", ["B", 1, r, r])])


def build_step(m: ToyModel, space: str, batch: int, path: Path, nan_above: float | None = None) -> None:
    g, r, n, t = _Graph(), m.res, m.n_latent(space), len(m.types)
    parts = [_flat(g, "good", 3 * r * r), _flat(g, "mask", r * r), _flat(g, "stitched", 3 * r * r)]
    if space == "z":
        parts.append("type_onehot")
    x = g.op("Concat", *parts, axis=1)
    tgt = g.op("Reshape", g.op("Tanh", g.op("MatMul", x, g.const(m.P[space]))), g.ints([batch, K, n]))  # [B,K,N]
    c = g.op("Reshape", "latent", g.ints([batch, 1, n]))
    d = g.op("Sub", c, tgt)  # [B, K, N]
    terms = g.op("Mul", g.op("ReduceMean", g.op("Mul", d, d), g.ints([2]), keepdims=0), "lambdas")  # [B, K]
    lam = g.op("Reshape", "lambdas", g.ints([1, K, 1]))
    grad = g.op("Mul", g.op("ReduceSum", g.op("Mul", d, lam), g.ints([1]), keepdims=0), g.const(2.0 / n))  # [B,N]
    if nan_above is not None:
        cmax = g.op("ReduceMax", g.op("Reshape", "latent", g.ints([batch, n])), g.ints([1]), keepdims=1)  # [B,1]
        poison = g.op("Mul", g.op("Sqrt", g.op("Sub", g.const(nan_above), cmax)), g.const(0.0))  # 0 or NaN, [B,1]
        terms, grad = g.op("Add", terms, poison), g.op("Add", grad, poison)
    g.output(terms, "terms")
    g.output(g.op("Reshape", grad, g.ints([batch, *m.latent_shape(space)])), "grad")
    img = [batch, 3, r, r]
    ins = [("latent", [batch, *m.latent_shape(space)]), ("good", img), ("mask", [batch, 1, r, r]), ("stitched", img),
           ("lambdas", [K])] + ([("type_onehot", [batch, t])] if space == "z" else [])
    g.save(path, ins, [("terms", [batch, K]), ("grad", [batch, *m.latent_shape(space)])])


def build_critic(m: ToyModel, path: Path) -> None:
    """A linear "realness" of (image, mask, type): enough to run the critic's I/O path."""
    g, r, t = _Graph(), m.res, len(m.types)
    x = _flat(g, g.op("Concat", "image", "mask", axis=1), 4 * r * r)
    score = g.op("Add", g.op("MatMul", x, g.const(m.Dc)), g.op("MatMul", "type_onehot", g.const(m.Dt)))
    g.output(score, "score")
    g.save(path, [("image", ["B", 3, r, r]), ("mask", ["B", 1, r, r]), ("type_onehot", ["B", t])],
           [("score", ["B", 1])])


def io_specs(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Declared I/O read back from the ONNX file (what the exporter's describe_onnx_io does)."""
    model = onnx.load(path, load_external_data=False)

    def spec(v: onnx.ValueInfoProto) -> TensorSpec:
        dims = [d.dim_param if d.dim_param else d.dim_value for d in v.type.tensor_type.shape.dim]
        return TensorSpec(v.name, dims, "float32")

    return [spec(v) for v in model.graph.input], [spec(v) for v in model.graph.output]


def _write_png(path: Path, arr: np.ndarray) -> None:
    import cv2

    cv2.imwrite(str(path), arr)


def make_toy_bundle(out: Path, *, model: ToyModel | None = None, spaces: tuple[str, ...] = ("wplus", "w", "z"),
                    batches: tuple[int, ...] = (1, 4), nan_above: float | None = None,
                    zip_path: Path | None = None, patch_scale: float | None = None,
                    critic: bool = True, part_size_px: float | None = None) -> Path:
    """Write a complete, valid bundle folder (and optionally a zip of it); returns the folder.

    With `patch_scale`, a patch-mode bundle: window = the model's resolution at that pixel scale, a synthesis
    that draws over the good window (an input), no encoder (init wavg) and, unless `critic` is False, a critic;
    `part_size_px`: the training parts' size it records (`run --scale auto`; None: none, as older bundles).
    """
    m = model or ToyModel()
    out.mkdir(parents=True, exist_ok=True)
    layered = patch_scale is not None
    builders: list[tuple[str, FileEntry, object]] = [] if layered else [
        ("encoder.onnx", FileEntry(role="encoder"), lambda p: build_encoder(m, p))]
    builders.append(("mapping.onnx", FileEntry(role="mapping"), lambda p: build_mapping(m, p)))
    if layered and critic:
        builders.append(("critic.onnx", FileEntry(role="critic"), lambda p: build_critic(m, p)))
    for s in spaces:
        builders.append((f"synthesis_{s}.onnx", FileEntry(role="synthesis", space=s),
                         lambda p, s=s: build_synthesis(m, s, p, layered)))
        for b in batches:
            builders.append((f"step_{s}_b{b}.onnx", FileEntry(role="step", space=s, batch=b),
                             lambda p, s=s, b=b: build_step(m, s, b, p, nan_above)))
    files = {}
    for name, entry, build in builders:
        build(out / name)  # type: ignore[operator]
        entry.inputs, entry.outputs = io_specs(out / name)
        files[name] = entry
    (out / "defect_bank").mkdir(exist_ok=True)
    bank = {}
    rng = np.random.default_rng(m.seed)
    for ty in m.types[1:]:
        img, msk = f"defect_bank/{ty}_000.png", f"defect_bank/{ty}_000_mask.png"
        _write_png(out / img, rng.integers(0, 255, (m.res, m.res, 3), dtype=np.uint8))
        _write_png(out / msk, (rng.uniform(0, 1, (m.res, m.res)) > 0.5).astype(np.uint8) * 255)
        bank[ty] = [{"image": img, "mask": msk}]
    manifest = Manifest(
        resolution=m.res, z_dim=m.z_dim, w_dim=m.w_dim, num_ws=m.num_ws, defect_types=list(m.types),
        spaces=list(spaces), step_batches=list(batches), opset=OPSET,
        default_lambdas={"mask": 1.0, "bg": 1.0, "def": 0.5, "pix": 0.25, "dom": 0.1, "prior": 0.01},
        defaults={"steps": 10, "lr": 0.05, "space": "wplus", "init": "wavg" if layered else "encoder",
                  "feather_px": 1},
        patch=None if not layered else {"window": m.res, "scale": patch_scale, **(
            {} if part_size_px is None else {"part_size_px": part_size_px, "part_size_rule": PART_SIZE_RULE})},
        w_avg={k: v.tolist() for k, v in m.w_avg.items()}, files=files, defect_bank=bank,
        configs={"toy": {"seed": m.seed}}, defectgen_version="0.1.0",
    )
    finalize_manifest(out, manifest)
    if zip_path is not None:
        with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
            for p in sorted(out.rglob("*")):
                if p.is_file():
                    zf.write(p, p.relative_to(out).as_posix())
    return out
