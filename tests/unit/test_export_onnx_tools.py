"""Graph hygiene passes (export/onnx_tools.py) on small hand-built ONNX graphs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from defectgen.export import onnx_tools as ot


def _conv_model(*, constant_axes: bool = False, scatter: bool = False) -> onnx.ModelProto:
    """x (B,2,4,4) -> Conv with a zero bias built as Expand(CastLike(0, x)) -> ReduceSum over axes -> y (B,3)."""
    w = numpy_helper.from_array(np.arange(3 * 2 * 9, dtype=np.float32).reshape(3, 2, 3, 3) / 50, "w")
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    cshape = numpy_helper.from_array(np.array([3], np.int64), "cshape")
    nodes = [
        helper.make_node("CastLike", ["zero", "x"], ["zero_like"]),
        helper.make_node("Expand", ["zero_like", "cshape"], ["bias"]),
        helper.make_node("Conv", ["x", "w", "bias"], ["c"], pads=[1, 1, 1, 1]),
    ]
    inits = [w, zero, cshape]
    if constant_axes:
        nodes.append(helper.make_node("Constant", [], ["axes"], value_ints=[2, 3]))
    else:
        inits.append(numpy_helper.from_array(np.array([2, 3], np.int64), "axes"))
    nodes.append(helper.make_node("ReduceSum", ["c", "axes"], ["y"], keepdims=0))
    if scatter:
        inits += [numpy_helper.from_array(np.zeros((1, 1), np.int64), "idx")]
        nodes.append(helper.make_node("ScatterND", ["y", "idx", "upd"], ["y2"]))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 2, 4, 4])]
        + ([helper.make_tensor_value_info("upd", TensorProto.FLOAT, [1, 3])] if scatter else []),
        [helper.make_tensor_value_info("y2" if scatter else "y", TensorProto.FLOAT, ["B", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_finish_graph_folds_checks_and_annotates():
    model = _conv_model(constant_axes=True)
    x = np.random.default_rng(0).standard_normal((2, 2, 4, 4)).astype(np.float32)
    want = _run(model, x)
    done = ot.finish_graph(model, meta={"role": "test", "resolution": "4"}, fixed_shapes=False)
    assert ot.op_histogram(done) == {"Conv": 1, "ReduceSum": 1}  # CastLike/Expand folded, zero bias dropped
    conv = next(n for n in done.graph.node if n.op_type == "Conv")
    assert len(conv.input) == 2
    assert "axes" in {i.name for i in done.graph.initializer}  # Constant -> initializer
    meta = ot.get_metadata(done)
    assert meta["role"] == "test" and meta["simplifier"].startswith(("onnxsim", "none"))
    np.testing.assert_allclose(_run(done, x), want, rtol=1e-6)
    ins, outs = ot.io_signature(done)
    assert ins == [{"name": "x", "shape": ["B", 2, 4, 4], "dtype": "float32"}]
    assert outs == [{"name": "y", "shape": ["B", 3], "dtype": "float32"}]


def test_policy_rejects_scatter():
    with pytest.raises(ot.GraphPolicyError, match="ScatterND"):
        ot.check_policy(_conv_model(scatter=True), fixed_shapes=False)


def test_policy_rejects_dynamic_axes_and_foreign_domains():
    model = _conv_model()
    model.graph.initializer.pop()  # "axes" becomes a dangling, non-initializer input
    with pytest.raises(ot.GraphPolicyError, match="must be an initializer"):
        ot.check_policy(model, fixed_shapes=False)
    model = _conv_model()
    model.graph.node[0].domain = "com.microsoft"
    with pytest.raises(ot.GraphPolicyError, match="com.microsoft"):
        ot.check_policy(model, fixed_shapes=False)


def test_fixed_shape_policy_covers_reshape_shapes():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Reshape", ["x", "s2"], ["y"]),
             helper.make_node("Identity", ["s"], ["s2"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 18)])
    ot.check_policy(model, fixed_shapes=False)
    with pytest.raises(ot.GraphPolicyError, match="Reshape"):
        ot.check_policy(model, fixed_shapes=True)


def test_op_histogram_order_and_metadata_roundtrip(tmp_path):
    model = _conv_model()
    hist = ot.op_histogram(model)
    assert list(hist) == ["CastLike", "Conv", "Expand", "ReduceSum"]  # ties sorted by name
    ot.set_metadata(model, {"b": "2", "a": "1"})
    ot.set_metadata(model, {"c": "3"})
    path = ot.save_model(model, tmp_path / "m.onnx")
    assert ot.get_metadata(onnx.load(str(path))) == {"c": "3"}
    assert not list(tmp_path.glob("*.data"))  # weights stay inside the file
