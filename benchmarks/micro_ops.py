"""Micro-benchmarks behind the step-graph findings of `profile_step.py`, in ONNX Runtime CPU.

    python benchmarks/micro_ops.py            # shapes of the 128 px model at batch 8
    python benchmarks/micro_ops.py --quick

Two hot spots of the exported step graph, each written the way the export does it today and in cheaper,
*exactly equivalent* forms (checked here against the current form):

1. 2x FIR resampling ([1,3,3,1] filter, StyleGAN2). Today: upsample = depthwise ConvTranspose 4x4 stride 2;
   downsample = depthwise Conv 4x4 stride 2, whose adjoint in the backward is again a depthwise ConvTranspose.
   Polyphase form: upsample = grouped 3x3 stride-1 Conv (C -> 4C, the four output phases) + DepthToSpace(CRD);
   downsample = SpaceToDepth(CRD) + grouped 3x3 stride-1 Conv (4C -> C). Both adjoints are the same op types
   (stride-1 conv adjoint = conv with the flipped kernel; DepthToSpace <-> SpaceToDepth), so the backward has
   no ConvTranspose at all.
2. Leaky-ReLU backward (gain sqrt 2, slope 0.2). Today: Mul(gain), Mul(0.2), Greater, Where = 4 passes. Slope
   form: the forward makes `s = Where(x > 0, gain, 0.2 gain)` once; the backward is one `Mul(g, s)`.
Results: `benchmarks/results/micro_ops.{json,md,png}`.
"""

from __future__ import annotations

import time
from typing import Any

import common
import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from defectgen.measure.stamp import machine_stamp

OPSET = 18
F1 = np.array([1.0, 3.0, 3.0, 1.0], np.float32) / 8.0 * 2.0  # per-axis FIR with gain 2 (gain 4 in 2D)


def fir4(c: int, gain: float) -> np.ndarray:
    f = np.outer(F1, F1) / 4.0 * gain  # sums to `gain`
    return np.broadcast_to(f, (c, 1, 4, 4)).astype(np.float32).copy()


def poly_up_kernel(c: int) -> np.ndarray:
    """[4C, 1, 3, 3]: output phase (a, b) of channel k is channel 4k + 2a + b; taps at the phase's neighbours."""
    taps = {0: {0: 0.25, 1: 0.75}, 1: {1: 0.75, 2: 0.25}}  # phase -> {kernel row (0 = x[j-1]): weight}
    w = np.zeros((c, 4, 3, 3), np.float32)
    for a in (0, 1):
        for b in (0, 1):
            for r, wr in taps[a].items():
                for s, ws in taps[b].items():
                    w[:, 2 * a + b, r, s] = wr * ws
    return w.reshape(4 * c, 1, 3, 3)


def poly_down_kernel(c: int) -> np.ndarray:
    """[C, 4, 3, 3] on CRD space-to-depth input (channel 4k + 2a + b = phase (a, b) of channel k): the 4x4
    stride-2 FIR (gain 1) as a 3x3 stride-1 conv over the four input phases. ONNX's SpaceToDepth is DCR
    (phase-major) only, so CRD is Reshape + Transpose + Reshape."""
    f = F1 / 2.0  # per-axis taps of the gain-1 filter, x[2j-1], x[2j], x[2j+1], x[2j+2]
    where = [(1, 0), (0, 1), (1, 1), (0, 2)]  # tap t -> (phase, kernel offset) with 0 = j-1, 1 = j, 2 = j+1
    w = np.zeros((c, 4, 3, 3), np.float32)
    for ty, (pa, ra) in enumerate(where):
        for tx, (pb, rb) in enumerate(where):
            w[:, 2 * pa + pb, ra, rb] += f[ty] * f[tx]
    return w


def model(nodes: list[Any], inits: dict[str, np.ndarray], x_shape: list[int]) -> bytes:
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)]
    if any("g" in n.input for n in nodes):
        inputs.append(helper.make_tensor_value_info("g", TensorProto.FLOAT, x_shape))
    graph = helper.make_graph(nodes, "m", inputs, [helper.make_empty_tensor_value_info("y")],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    return m.SerializeToString()


def resample_variants(shape: list[int]) -> dict[str, tuple[bytes, list[int]]]:
    """Name -> (model, input shape): up / down forward and the adjoints, current vs polyphase."""
    b, c, h, w = shape
    n = helper.make_node
    up_in, down_in = [b, c, h, w], [b, c, 2 * h, 2 * w]
    return {
        "up: ConvTranspose dw (now)": (model([n("ConvTranspose", ["x", "k"], ["y"], group=c, strides=[2, 2],
                                                pads=[1, 1, 1, 1])], {"k": fir4(c, 4.0)}, up_in), up_in),
        "up: Conv 3x3 C->4C + DepthToSpace": (model([n("Conv", ["x", "k"], ["t"], group=c, pads=[1, 1, 1, 1]),
                                                     n("DepthToSpace", ["t"], ["y"], blocksize=2, mode="CRD")],
                                                    {"k": poly_up_kernel(c)}, up_in), up_in),
        "up: separable elementwise (Pad/Slice/Mul/Add/Concat)": separable_up(up_in),
        "up: Resize linear (NOT exact: edge-clamped borders)": (model(
            [n("Resize", ["x", "", "sc"], ["y"], mode="linear", coordinate_transformation_mode="half_pixel")],
            {"sc": np.array([1, 1, 2, 2], np.float32)}, up_in), up_in),
        "down / up-adjoint: Conv dw 4x4 s2 (now)": (model([n("Conv", ["x", "k"], ["y"], group=c, strides=[2, 2],
                                                             pads=[1, 1, 1, 1])], {"k": fir4(c, 1.0)}, down_in),
                                                   down_in),
        "down / up-adjoint: SpaceToDepth(CRD) + Conv 3x3 4C->C": (model(
            [n("Reshape", ["x", "s6"], ["t"]), n("Transpose", ["t"], ["u"], perm=[0, 1, 3, 5, 2, 4]),
             n("Reshape", ["u", "s4"], ["v"]), n("Conv", ["v", "k"], ["y"], group=c, pads=[1, 1, 1, 1])],
            {"k": poly_down_kernel(c), "s6": np.array([b, c, h, 2, w, 2], np.int64),
             "s4": np.array([b, 4 * c, h, w], np.int64)}, down_in), down_in),
    }


def separable_up(shape: list[int]) -> tuple[bytes, list[int]]:
    """The 2x FIR upsample as two 1-D passes of elementwise ops: per axis, even outputs 0.25 x[j-1] + 0.75 x[j],
    odd outputs 0.75 x[j] + 0.25 x[j+1] (zero outside), interleaved by Unsqueeze + Concat + Reshape."""
    b, c, h, w = shape
    n = helper.make_node
    nodes: list[Any] = []
    inits = {"q": np.float32(0.25), "t": np.float32(0.75)}

    def axis_pass(x: str, axis: int, size: int, out_shape: list[int], tag: str) -> str:
        pads = [0] * 8
        pads[axis], pads[4 + axis] = 1, 1
        inits[f"p{tag}"] = np.array(pads, np.int64)
        for nm, lo in (("l", 0), ("r", 2)):
            inits[f"{nm}s{tag}"], inits[f"{nm}e{tag}"] = np.array([lo], np.int64), np.array([lo + size], np.int64)
        inits[f"ax{tag}"], inits[f"u{tag}"] = np.array([axis], np.int64), np.array([axis + 1], np.int64)
        inits[f"sh{tag}"] = np.array(out_shape, np.int64)
        nodes.extend([
            n("Pad", [x, f"p{tag}"], [f"xp{tag}"]),
            n("Slice", [f"xp{tag}", f"ls{tag}", f"le{tag}", f"ax{tag}"], [f"xl{tag}"]),
            n("Slice", [f"xp{tag}", f"rs{tag}", f"re{tag}", f"ax{tag}"], [f"xr{tag}"]),
            n("Mul", [x, "t"], [f"x3{tag}"]),
            n("Mul", [f"xl{tag}", "q"], [f"l1{tag}"]), n("Add", [f"l1{tag}", f"x3{tag}"], [f"ev{tag}"]),
            n("Mul", [f"xr{tag}", "q"], [f"r1{tag}"]), n("Add", [f"r1{tag}", f"x3{tag}"], [f"od{tag}"]),
            n("Unsqueeze", [f"ev{tag}", f"u{tag}"], [f"eu{tag}"]),
            n("Unsqueeze", [f"od{tag}", f"u{tag}"], [f"ou{tag}"]),
            n("Concat", [f"eu{tag}", f"ou{tag}"], [f"cc{tag}"], axis=axis + 1),
            n("Reshape", [f"cc{tag}", f"sh{tag}"], [f"o{tag}"]),
        ])
        return f"o{tag}"

    xw = axis_pass("x", 3, w, [b, c, h, 2 * w], "w")
    xh = axis_pass(xw, 2, h, [b, c, 2 * h, 2 * w], "h")
    nodes.append(n("Identity", [xh], ["y"]))
    return model(nodes, inits, shape), shape


def relu_variants(shape: list[int]) -> dict[str, tuple[bytes, list[int]]]:
    """Leaky-ReLU backward: today's 4-pass chain vs one Mul with a slope tensor made in the forward."""
    n = helper.make_node
    g, s = float(np.sqrt(2.0)), 0.2
    consts = {"gain": np.float32(g), "slope": np.float32(s), "zero": np.float32(0.0),
              "hi": np.float32(g), "lo": np.float32(g * s)}
    now = [n("Greater", ["x", "zero"], ["m"]), n("Mul", ["g", "gain"], ["g1"]), n("Mul", ["g1", "slope"], ["g2"]),
           n("Where", ["m", "g1", "g2"], ["y"])]
    slope_fwd = [n("Greater", ["x", "zero"], ["m"]), n("Where", ["m", "hi", "lo"], ["y"])]
    consts.update({"d": np.float32(g * (1 - s))})
    no_where = [n("Greater", ["x", "zero"], ["m"]), n("Cast", ["m"], ["mf"], to=TensorProto.FLOAT),
                n("Mul", ["mf", "d"], ["md"]), n("Add", ["md", "lo"], ["sl"]), n("Mul", ["g", "sl"], ["y"])]
    slope_bwd = [n("Mul", ["g", "x"], ["y"])]  # x stands for the saved slope tensor
    return {"lrelu bwd: Greater+Mul+Mul+Where (now)": (model(now, consts, shape), shape),
            "lrelu bwd: g * (0.2g + 0.8g * Cast(x>0)), no Where": (model(no_where, consts, shape), shape),
            "lrelu fwd extra: slope = Where(x>0, g, 0.2g)": (model(slope_fwd, consts, shape), shape),
            "lrelu bwd: Mul(grad, slope)": (model(slope_bwd, {}, shape), shape)}


def session(data: bytes, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def measure(group: dict[str, tuple[bytes, list[int]]], threads: int,
            rounds: int) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Time every variant of a group in alternating rounds; outputs of same-kind variants must agree."""
    rng = np.random.default_rng(0)
    feeds_by_shape: dict[tuple[int, ...], dict[str, np.ndarray]] = {}
    fns, outs = {}, {}
    for name, (data, shape) in group.items():
        feeds = feeds_by_shape.setdefault(tuple(shape), {"x": rng.standard_normal(shape, dtype=np.float32),
                                                         "g": rng.standard_normal(shape, dtype=np.float32)})
        sess = session(data, threads)
        names = {i.name for i in sess.get_inputs()}
        f = {k: v for k, v in feeds.items() if k in names}
        outs[name] = sess.run(None, f)[0]
        fns[name] = lambda sess=sess, f=f: sess.run(None, f)
    t = common.interleaved(fns, rounds=rounds, per_round=3)
    return [{"variant": k, "median_ms": v["median_s"] * 1e3, "p25_ms": v["p25_s"] * 1e3, "p75_ms": v["p75_s"] * 1e3,
             "out_shape": list(outs[k].shape)} for k, v in t.items()], outs


def check_equal(outs: dict[str, np.ndarray], a: str, b: str) -> float:
    """Max abs difference of two variants' outputs (they compute the same function)."""
    return float(np.abs(outs[a] - outs[b]).max())


def main() -> None:
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    started, stamp = time.time(), machine_stamp()
    # (batch, channels, side) of the 2x resamplers in the 128 px model's step graph at batch 8 (from the profile)
    shapes = [[2, 8, 16, 16]] if a.quick else [[8, 8, 64, 64], [8, 16, 64, 64], [8, 16, 32, 32], [8, 32, 32, 32],
                                               [8, 32, 16, 16], [8, 64, 8, 8]]
    rows, errors = [], []
    for shape in shapes:
        rs, outs = measure(resample_variants(shape), a.threads, 2 if a.quick else 4)
        names = list(outs)
        errors.append({"shape": shape, "up_max_abs_diff": max(check_equal(outs, names[0], names[1]),
                                                              check_equal(outs, names[0], names[2])),
                       "resize_max_abs_diff": check_equal(outs, names[0], names[3]),
                       "down_max_abs_diff": check_equal(outs, names[4], names[5])})
        rows += [{"shape": shape, **r} for r in rs]
        print(shape, [f"{r['variant'][:24]} {r['median_ms']:.2f}" for r in rs], errors[-1], flush=True)
    b, c, h, w = shapes[0]
    relu_shape = [b, c, 2 * h, 2 * w]
    rs, _ = measure(relu_variants(relu_shape), a.threads, 2 if a.quick else 4)
    rows += [{"shape": relu_shape, **r} for r in rs]
    f = common.fmt
    up = [r for r in rows if r["variant"].startswith("up")]
    down = [r for r in rows if r["variant"].startswith("down")]

    def ratio(group: list[dict[str, Any]], word: str) -> float:
        now = sum(r["median_ms"] for r in group if "(now)" in r["variant"])
        new = sum(r["median_ms"] for r in group if word in r["variant"])
        return now / new if new else float("nan")

    relu = {r["variant"]: r["median_ms"] for r in rows if r["variant"].startswith("lrelu")}
    relu_now = next(v for k, v in relu.items() if "(now)" in k)
    relu_new = next(v for k, v in relu.items() if "Mul(grad" in k)
    relu_nowhere = next(v for k, v in relu.items() if "no Where" in k)
    summary = {"upsample_speedup_separable": ratio(up, "separable"),
               "upsample_speedup_polyphase": ratio(up, "Conv 3x3"),
               "downsample_speedup_polyphase": ratio(down, "SpaceToDepth"),
               "lrelu_backward_speedup_no_where": relu_now / relu_nowhere,
               "lrelu_backward_speedup_saved_slope": relu_now / relu_new,
               "max_abs_diff_exact_variants": max(max(e["up_max_abs_diff"], e["down_max_abs_diff"]) for e in errors)}
    tables = [("2x FIR resampling, current vs polyphase (ms, median of alternating rounds)", common.md_table(
        ["input shape", "variant", "median ms", "p25–p75 ms", "output shape"],
        [["x".join(map(str, r["shape"])), r["variant"], f(r["median_ms"], 2), f"{r['p25_ms']:.2f}–{r['p75_ms']:.2f}",
          "x".join(map(str, r["out_shape"]))] for r in rows])),
        ("Equivalence (max |current − variant|, inputs ~ N(0,1))", common.md_table(
            ["shape", "upsample: polyphase, separable", "upsample: Resize", "downsample: polyphase"],
            [["x".join(map(str, e["shape"])), f"{e['up_max_abs_diff']:.1e}", f"{e['resize_max_abs_diff']:.1e}",
              f"{e['down_max_abs_diff']:.1e}"] for e in errors]))]
    fig, ax = common.new_figure(1, 1, (10, 4.8))
    labels = [f"{'x'.join(map(str, r['shape']))} {r['variant']}" for r in rows]
    ax[0, 0].barh(labels[::-1], [r["median_ms"] for r in rows][::-1],
                  color=["tab:red" if "(now)" in r["variant"] else "tab:green" for r in rows][::-1])
    ax[0, 0].set_xscale("log")
    ax[0, 0].set_xlabel(f"ms (ONNX Runtime CPU, {a.threads} thread(s)); red = as exported today")
    ax[0, 0].tick_params(axis="y", labelsize=5)
    fig.subplots_adjust(left=0.45)
    notes = [f"ONNX Runtime CPU, {a.threads} intra-op thread(s), all graph optimisations; each variant is a one- or "
             "few-node model timed in alternating rounds (3 calls per round)",
             "the polyphase forms compute the same function (equivalence table: float32 round-off only); they are "
             "export changes (nets/ops.py `upsample2x` / `downsample2x`), not retraining"]
    common.write_results("micro_ops", summary=summary, data={"rows": rows, "equivalence": errors}, tables=tables,
                         figure=fig, quick=a.quick, out_dir=a.out_dir, notes=notes, machine=stamp, started=started)
    print(summary)


if __name__ == "__main__":
    main()
