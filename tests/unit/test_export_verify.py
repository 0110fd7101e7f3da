"""The parity checker itself (export/verify.py): it must pass right graphs and fail wrong ones, loudly."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from defectgen.export.graphs import export_graph, model_dims
from defectgen.export.testing import tiny_nets
from defectgen.export.verify import (
    Bounds,
    VerifyError,
    _Session,
    finite_difference_errors,
    rel_error,
    verify_graphs,
)


def test_rel_error_edge_cases():
    assert rel_error(np.ones(3), np.ones(3)) == 0.0
    assert rel_error(np.zeros(2), np.zeros(2)) == 0.0
    assert rel_error(np.array([1.0, 2.0]), np.array([1.0, 2.2])) == pytest.approx(0.2 / 2.2)
    assert rel_error(np.array([np.nan]), np.array([1.0])) == float("inf")
    assert rel_error(np.ones(3), np.ones(4)) == float("inf")


def _step_session(tmp_path, name: str, nodes, inits) -> _Session:
    """A session of a toy step graph: latent [1, 4] -> (terms, grad)."""
    c = helper.make_tensor_value_info("latent", TensorProto.FLOAT, [1, 4])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in ("terms", "grad")]
    path = tmp_path / f"{name}.onnx"
    model = helper.make_model(helper.make_graph(nodes, name, [c], outs, inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, str(path))
    return _Session(path)


def _quadratic(tmp_path, grad_scale: float):
    """terms = c² (per element), grad = grad_scale · c: right when grad_scale == 2."""
    nodes = [helper.make_node("Mul", ["latent", "latent"], ["terms"]),
             helper.make_node("Mul", ["latent", "k"], ["grad"])]
    k = helper.make_tensor("k", TensorProto.FLOAT, [], [grad_scale])
    return _step_session(tmp_path, f"q{grad_scale}", nodes, [k])


@pytest.mark.parametrize(("scale", "ok"), [(2.0, True), (2.1, False), (-2.0, False)])
def test_finite_differences_catch_a_wrong_gradient(tmp_path, scale, ok):
    sess = _quadratic(tmp_path, scale)
    feeds = {"latent": np.array([[0.5, -1.0, 2.0, 0.1]], np.float32)}
    grad = sess(feeds)["grad"]
    errors = finite_difference_errors(sess, feeds, grad, eps=(3e-3, 1e-3), directions=3, seed=0)
    assert len(errors) == 4
    assert (max(errors) <= 1e-2) is ok, errors


def _sharp(tmp_path, grad_scale: float):
    """terms = k·c³ with k = 3000 (a sharply curving objective), grad = grad_scale · 3k · c²: right at scale 1."""
    nodes = [helper.make_node("Mul", ["latent", "latent"], ["c2"]),
             helper.make_node("Mul", ["c2", "latent"], ["c3"]),
             helper.make_node("Mul", ["c3", "k"], ["terms"]),
             helper.make_node("Mul", ["c2", "g"], ["grad"])]
    inits = [helper.make_tensor("k", TensorProto.FLOAT, [], [3000.0]),
             helper.make_tensor("g", TensorProto.FLOAT, [], [grad_scale * 9000.0])]
    return _step_session(tmp_path, f"s{grad_scale}", nodes, inits)


@pytest.mark.parametrize(("scale", "ok"), [(1.0, True), (1.05, False)])
def test_finite_differences_tolerate_curvature_but_not_a_wrong_gradient(tmp_path, scale, ok):
    """At ε = 3e-3 alone the truncation error of this curved objective exceeds the bound; the smaller step
    keeps a right gradient passing while a 5 % wrong one still fails."""
    sess = _sharp(tmp_path, scale)
    feeds = {"latent": np.array([[0.004, -0.004, 0.008, 0.002]], np.float32)}
    grad = sess(feeds)["grad"]
    coarse = finite_difference_errors(sess, feeds, grad, eps=(3e-3,), directions=3, seed=0)
    errors = finite_difference_errors(sess, feeds, grad, eps=(3e-3, 1e-3), directions=3, seed=0)
    if ok:
        assert max(coarse) > 1e-2, coarse  # the case the second step exists for
    assert (max(errors) <= 1e-2) is ok, errors


def _kinked(tmp_path, grad_scale: float):
    """terms = LeakyReLU(c) (slope 0.2 below 0), grad = grad_scale · (1 if c > 0 else 0.2): autograd's rule at
    the kink (the left slope at exactly 0); right at scale 1."""
    nodes = [helper.make_node("LeakyRelu", ["latent"], ["terms"], alpha=0.2),
             helper.make_node("Greater", ["latent", "zero"], ["pos"]),
             helper.make_node("Where", ["pos", "one", "low"], ["slope"]),
             helper.make_node("Mul", ["slope", "k"], ["grad"])]
    inits = [helper.make_tensor(n, TensorProto.FLOAT, [], [v])
             for n, v in (("zero", 0.0), ("one", 1.0), ("low", 0.2), ("k", grad_scale))]
    return _step_session(tmp_path, f"l{grad_scale}", nodes, inits)


@pytest.mark.parametrize(("scale", "ok"), [(1.0, True), (1.1, False), (-1.0, False)])
def test_finite_differences_accept_one_side_of_a_kink_but_not_a_wrong_gradient(tmp_path, scale, ok):
    """At a point on a leaky ReLU's kink the central difference averages both slopes at every step, so only a
    one-sided difference can confirm autograd's; a gradient 10 % off, or of the wrong sign, still fails."""
    sess = _kinked(tmp_path, scale)
    feeds = {"latent": np.array([[0.0, 0.7, -0.5, 0.3]], np.float32)}
    grad = sess(feeds)["grad"]
    errors = finite_difference_errors(sess, feeds, grad, eps=(3e-3, 1e-3, 3e-4), directions=3, seed=0)
    assert (max(errors) <= 1e-2) is ok, errors


def test_verify_fails_for_a_graph_of_other_weights(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        G0, E0, D0 = tiny_nets(seed=0)
        G1, E1, D1 = tiny_nets(seed=1)
        g = export_graph("mapping", G0, E0, D0, dims=model_dims(G0), path=tmp_path / "mapping.onnx", opset=18)
        good = verify_graphs(G0, E0, D0, [g], model_dims(G0))
        assert good.passed and good.worst["output_rel"] <= 1e-4
        good.raise_if_failed()
        bad = verify_graphs(G1, E1, D1, [g], model_dims(G1), bounds=Bounds(output_rel=1e-4))
    finally:
        torch.set_num_threads(threads)
    assert not bad.passed
    assert bad.to_dict()["checks"][0]["notes"]
    with pytest.raises(VerifyError, match=r"mapping.onnx \(random\): w rel error"):
        bad.raise_if_failed()
