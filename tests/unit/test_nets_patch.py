"""Layered patch G and D at toy size: shapes, composite math, gradients through frozen nets, export-ready trace."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from defectgen.nets.patch import (
    PatchDiscriminator,
    PatchDiscriminatorConfig,
    PatchGenerator,
    PatchGeneratorConfig,
    composite,
    hard_alpha,
)
from defectgen.training.patch_gan import mode_seeking, model_configs

T = 3


def onehot(ids):
    return torch.nn.functional.one_hot(torch.tensor(ids), T).float()


def nets(window=16):
    torch.manual_seed(0)
    g_cfg, d_cfg = model_configs(window, T, tiny=True)
    return PatchGenerator(g_cfg), PatchDiscriminator(d_cfg)


def goods(b=2, p=16):
    return torch.rand(b, 3, p, p, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.mark.parametrize("window", [16, 32])
def test_shapes_and_ranges(window):
    g, d = nets(window)
    z, c, good = torch.randn(2, 16), onehot([0, 2]), goods(2, window)
    image, alpha, colour, logit = g(z, c, good)
    assert image.shape == colour.shape == (2, 3, window, window)
    assert alpha.shape == logit.shape == (2, 1, window, window)
    assert colour.abs().max() <= 1 and set(alpha.unique().tolist()) <= {0.0, 1.0}  # hard alpha by default
    assert g.num_ws == 2 * {16: 4, 32: 5}[window] - 2 and g.w_avg.shape == (T, 16)
    assert d(image, alpha, c).shape == (2, 1)
    assert d.feature_map(image, alpha).shape == (2, d.cfg.channels(window // 2), window // 2, window // 2)
    assert d.features(image, alpha).ndim == 2


def test_w_and_wplus_paths_agree_and_shape_errors():
    g, _ = nets()
    w, good = torch.randn(2, 16), goods()
    a = g.synthesis(w, good)
    b = g.synthesis(w[:, None].expand(-1, g.num_ws, -1), good)
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="good"):
        g.synthesis(w, goods(2, 32))
    with pytest.raises(ValueError, match="window"):
        PatchGeneratorConfig(window=48)


def test_good_window_steers_the_colour():
    """The good window is an input at every scale: changing it changes the colour layer."""
    g, _ = nets()
    w = torch.randn(2, 16)
    assert not torch.allclose(g.synthesis(w, goods())[0], g.synthesis(w, -goods())[0])


def test_full_design_draws_the_whole_window_without_seeing_the_good_one():
    """A full patch G (`layered=False`): its image is its own window, whatever the good window holds; its
    composite is that window (mask aside), and it has no good-window features to train."""
    torch.manual_seed(0)
    g_cfg, _ = model_configs(16, T, tiny=True, design="full")
    g = PatchGenerator(g_cfg)
    assert not g_cfg.layered and not any("from_good" in n for n, _ in g.named_parameters())
    z, c = torch.randn(2, 16), onehot([0, 1])
    img_a, alpha_a, colour_a, _ = g(z, c, goods(), hard=False)
    img_b, alpha_b, _, _ = g(z, c, -goods(), hard=False)
    assert torch.equal(img_a, img_b) and torch.equal(img_a, colour_a) and torch.equal(alpha_a, alpha_b)
    logit = torch.randn(2, 1, 16, 16)
    for hard in (False, True):
        assert torch.equal(composite(goods(), colour_a, logit, hard=hard, layered=False)[0], colour_a)
    layered, _ = nets()
    assert any("from_good" in n for n, _ in layered.named_parameters())


def test_linear_colour_head_is_the_tanh_head_unsquashed_and_keeps_its_gradient_on_black():
    """`colour_tanh=False` outputs the pre-tanh colour of the same weights, and where that colour is deep in
    the dark (a hole core) its gradient does not vanish as the tanh's does."""
    g, _ = nets()
    lin = PatchGenerator(model_configs(16, T, tiny=True, colour_head="linear")[0])
    lin.load_state_dict(g.state_dict())
    w, good = torch.randn(2, 16), goods()
    torch.testing.assert_close(torch.tanh(lin.synthesis(w, good)[0]), g.synthesis(w, good)[0])
    grads = []
    for net in (g, lin):
        bias = net.synthesis.blocks[-1].to_rgb.bias
        with torch.no_grad():
            bias.fill_(-6.0)  # every pixel far below -1 before the head's squashing: black
        net.synthesis(w, good)[0].sum().backward()
        grads.append(bias.grad.abs().mean().item())
    assert grads[1] == pytest.approx(2 * 16 * 16)  # d(sum colour)/d(bias) = pixels x batch, undamped
    assert grads[0] < 1e-2 * grads[1]  # tanh'(-6) ~ 2.5e-5: D's gradient cannot pull the colour off black


def test_wide_colour_head_is_bounded_and_keeps_a_gradient_at_black():
    """`wide` is 1.2 tanh(x / 1.2) of the same weights: never beyond +-1.2, and its slope
    where it draws near-black (-0.99) is 1 - (0.99 / 1.2)^2 ~ 0.32, the plain tanh's there 0.02."""
    lin = PatchGenerator(model_configs(16, T, tiny=True, colour_head="linear")[0])
    wide = PatchGenerator(model_configs(16, T, tiny=True, colour_head="wide")[0])
    assert wide.cfg.colour_bound == pytest.approx(1.2) and wide.cfg.colour_tanh
    wide.load_state_dict(lin.state_dict())
    w, good = torch.randn(2, 16), goods()
    torch.testing.assert_close(wide.synthesis(w, good)[0], 1.2 * torch.tanh(lin.synthesis(w, good)[0] / 1.2))
    bias = wide.synthesis.blocks[-1].to_rgb.bias
    with torch.no_grad():
        bias.fill_(-50.0)
    colour = wide.synthesis(w, good)[0]
    assert colour.min() >= -1.2 - 1e-6 and colour.max() <= -1.19  # saturated, but within its bound
    slopes = []
    for net in (wide, PatchGenerator(model_configs(16, T, tiny=True)[0])):  # the wide head, the plain tanh
        bound = net.cfg.colour_bound
        x = torch.tensor(bound * math.atanh(-0.99 / bound), requires_grad=True)  # where it draws near-black
        colour = net.synthesis.colour_head(x)
        assert colour.item() == pytest.approx(-0.99, abs=1e-5)
        colour.backward()
        slopes.append(x.grad.item())
    assert slopes[0] == pytest.approx(1 - (0.99 / 1.2) ** 2, rel=1e-4)  # 0.32: D can still pull it back
    assert slopes[1] < 0.1 * slopes[0]  # the plain tanh: 0.02
    with pytest.raises(ValueError, match="colour_bound must be >= 1"):
        replace(wide.cfg, colour_bound=0.9)


def test_composite_math():
    good, colour = goods(), goods() * -0.5
    off = torch.full((2, 1, 16, 16), -1e4)
    for hard in (False, True):
        img, a = composite(good, colour, off, hard=hard)
        assert torch.equal(img, good) and torch.equal(a, torch.zeros_like(a))  # alpha 0: exactly the good window
        img, _ = composite(good, colour, -off, hard=hard)
        torch.testing.assert_close(img, colour)
    logit = torch.randn(2, 1, 16, 16)
    a = torch.sigmoid(logit)
    torch.testing.assert_close(composite(good, colour, logit)[0], a * colour + (1 - a) * good)
    hard = composite(good, colour, logit, hard=True)[0]
    torch.testing.assert_close(hard, torch.where(logit > 0, colour, good))


def test_hard_alpha_passes_the_sigmoid_gradient():
    logit = torch.randn(4, 1, 8, 8, requires_grad=True)
    (g_hard,) = torch.autograd.grad(hard_alpha(logit).sum(), logit)
    (g_soft,) = torch.autograd.grad(torch.sigmoid(logit).sum(), logit)
    torch.testing.assert_close(g_hard, g_soft)


def _objective(g, wp, good, target):
    """Inversion-like terms over w+: mask + background (smooth alpha, as an inversion uses)."""
    colour, logit = g.synthesis(wp, good)
    image, alpha = composite(good, colour, logit)
    return (alpha - target).square().mean() + ((1 - target) * (image - good)).square().mean()


def test_grad_wrt_wplus_through_frozen_synthesis_matches_trainable():
    g, _ = nets()
    good, target = goods(), (goods()[:, :1] > 0.5).float()
    wp = torch.randn(2, g.num_ws, 16, requires_grad=True)
    (ref,) = torch.autograd.grad(_objective(g, wp, good, target), wp)
    g.eval().requires_grad_(False)  # frozen: nets/ops switches to its adjoint convs
    (got,) = torch.autograd.grad(_objective(g, wp, good, target), wp)
    assert got.abs().sum() > 0 and torch.isfinite(got).all()
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)


def test_frozen_step_traces_with_make_fx_without_unexportable_ops():
    from torch.fx.experimental.proxy_tensor import make_fx

    g, d = nets()
    g.eval().requires_grad_(False)
    d.eval().requires_grad_(False)

    def step(wp, good, target):
        with torch.enable_grad():
            wp = wp.detach().requires_grad_(True)
            colour, logit = g.synthesis(wp, good)
            image, alpha = composite(good, colour, logit)
            loss = (alpha - target).square().mean() + d.features(image * target, target).square().mean()
            (grad,) = torch.autograd.grad(loss, wp)
        return loss.detach(), grad

    args = (torch.randn(2, g.num_ws, 16), goods(), (goods()[:, :1] > 0).float())
    gm = make_fx(step)(*args)
    targets = {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}
    bad = [t for t in targets if any(f in t for f in ("convolution_backward", "scatter", "index_put", "upsample"))]
    assert not bad
    torch.testing.assert_close(gm(*args)[1], step(*args)[1])


def test_mode_seeking_ratio():
    x, w = torch.randn(4, 3, 8, 8), torch.randn(4, 16)
    assert torch.equal(mode_seeking(torch.cat([x[:2], x[:2]]), w), torch.zeros(2))
    r = mode_seeking(x, w)
    torch.testing.assert_close(r, (x[:2] - x[2:]).abs().mean((1, 2, 3)) / (w[:2] - w[2:]).abs().mean(1))


def test_discriminator_config_round_trip():
    from defectgen.training.config import from_dict, to_dict

    cfg = PatchDiscriminatorConfig(res=16, n_types=T, channel_max=16)
    assert from_dict(PatchDiscriminatorConfig, to_dict(cfg)) == cfg
