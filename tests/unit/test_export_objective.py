"""The inversion objective (export/objective.py) and the torch reference backend, on tiny random nets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from defectgen.export.graphs import example_inputs, model_dims
from defectgen.export.objective import DEFAULT_LAMBDAS, make_step, objective_terms, to_wplus
from defectgen.export.testing import tiny_nets
from defectgen.export.torch_backend import TorchBackend
from defectgen.runtime.bundle.manifest import LOSS_TERMS


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # tiny tensors: OpenMP threads only add spin-wait on a busy 2-core CI box (2 s vs 0.07 s per step)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def nets():
    return tiny_nets()


def _inputs(nets, space, batch=2, seed=0):
    return example_inputs("step", model_dims(nets[0]), space=space, batch=batch, seed=seed)


def test_default_lambdas_cover_every_term():
    assert list(DEFAULT_LAMBDAS) == list(LOSS_TERMS)


@pytest.mark.parametrize("space", ["wplus", "w", "z"])
def test_terms_shape_weighting_and_positivity(nets, space):
    G, E, D = nets
    x = _inputs(nets, space)
    step = make_step(G, E, D, space)
    terms, grad = step(*x.values())
    assert terms.shape == (2, len(LOSS_TERMS)) and grad.shape == x["latent"].shape
    assert torch.all(terms > 0) and torch.isfinite(grad).all()
    lam = torch.arange(1.0, 7.0)
    terms2, _ = step(*{**x, "lambdas": lam}.values())
    torch.testing.assert_close(terms2, terms * lam, rtol=1e-5, atol=1e-7)


def test_zero_lambdas_give_zero_gradient(nets):
    G, E, D = nets
    x = _inputs(nets, "wplus")
    terms, grad = make_step(G, E, D, "wplus")(*{**x, "lambdas": torch.zeros(6)}.values())
    assert float(terms.abs().max()) == 0.0 and float(grad.abs().max()) == 0.0


def test_samples_are_independent(nets):
    """grad of sample 0 must not depend on sample 1's inputs (per-sample gradients from one batched graph)."""
    G, E, D = nets
    x = _inputs(nets, "w")
    step = make_step(G, E, D, "w")
    t1, g1 = step(*x.values())
    y = dict(x)
    y["good"] = x["good"].clone()
    y["good"][1] = -y["good"][1]
    y["latent"] = x["latent"].clone()
    y["latent"][1] += 1.0
    t2, g2 = step(*y.values())
    torch.testing.assert_close(t1[0], t2[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g1[0], g2[0], rtol=1e-5, atol=1e-7)
    assert not torch.allclose(t1[1], t2[1])


def test_w_space_is_broadcast_wplus(nets):
    """w is w+ with equal rows: same terms, and d/dw = sum over layers of d/dw+."""
    G, E, D = nets
    x = _inputs(nets, "w")
    t_w, g_w = make_step(G, E, D, "w")(*x.values())
    wp = to_wplus(G, x["latent"], "w").contiguous()
    t_p, g_p = make_step(G, E, D, "wplus")(*{**x, "latent": wp}.values())
    torch.testing.assert_close(t_w, t_p, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_w, g_p.sum(1), rtol=1e-4, atol=1e-6)


def test_z_space_goes_through_mapping(nets):
    G, E, D = nets
    x = _inputs(nets, "z")
    t_z, _ = make_step(G, E, D, "z")(*x.values())
    w = G.mapping(x["latent"], x["type_onehot"])
    t_w, _ = make_step(G, E, D, "w")(w, *list(x.values())[1:5])
    keep = [LOSS_TERMS.index(t) for t in ("mask", "bg", "def", "pix", "dom")]
    torch.testing.assert_close(t_z[:, keep], t_w[:, keep], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(t_z[:, 5], x["latent"].square().mean(1))  # prior: mean(z^2), λ=1


def test_z_space_needs_type(nets):
    G, E, D = nets
    x = _inputs(nets, "z")
    with pytest.raises(ValueError, match="type_onehot"):
        make_step(G, E, D, "z")(*list(x.values())[:5])
    with pytest.raises(ValueError, match="did you mean 'wplus'"):
        make_step(G, E, D, "wplsu")


def test_gradient_matches_float64_finite_differences(nets):
    """The autograd gradient (through the nets' adjoint convs) is the derivative of the objective."""
    import copy

    G, E, D = (copy.deepcopy(n).double() for n in nets)
    x = {k: v.double() for k, v in _inputs(nets, "wplus").items()}
    _, grad = make_step(G, E, D, "wplus")(*x.values())
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        d = torch.randn(x["latent"].shape, generator=gen, dtype=torch.float64)
        d /= d.norm()
        eps = 1e-5

        def f(c, d=d):
            with torch.no_grad():
                return objective_terms(G, E, D, c, *list(x.values())[1:], space="wplus").sum()

        fd = (f(x["latent"] + eps * d) - f(x["latent"] - eps * d)) / (2 * eps)
        assert abs(float(fd) - float((grad * d).sum())) <= 1e-6 * float(grad.norm())


def test_torch_backend_numpy_api(nets):
    G, E, D = nets
    tb = TorchBackend(G, E, D, step_batches=[1, 4])
    x = {k: v.numpy() for k, v in _inputs(nets, "z", batch=3).items()}
    wp = tb.encode(x["good"], x["mask"])
    assert wp.shape == (3, G.num_ws, 16) and wp.dtype == np.float32
    w = tb.map(x["latent"], x["type_onehot"])
    img, mlog = tb.synthesize("z", x["latent"], x["type_onehot"])
    img_w, _ = tb.synthesize("w", w)
    np.testing.assert_allclose(img, img_w, rtol=1e-5, atol=1e-6)
    assert img.shape == (3, 3, 16, 16) and mlog.shape == (3, 1, 16, 16)
    terms, grad = tb.step("z", x["latent"], x["good"], x["mask"], x["stitched"], x["lambdas"], x["type_onehot"])
    assert terms.shape == (3, 6) and grad.shape == (3, 16) and grad.dtype == np.float32
    assert tb.step_batches("w") == [1, 4]
    with pytest.raises(ValueError, match="lambdas"):
        tb.step("w", w, x["good"], x["mask"], x["stitched"], np.ones(5, np.float32))
