"""defectgen.nets: shapes, config round trips, the adjoint autograd Functions, and export-readiness."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F

from defectgen.nets import ops
from defectgen.nets.encoder import Encoder, EncoderConfig
from defectgen.nets.stylegan import (
    Discriminator,
    DiscriminatorConfig,
    Generator,
    GeneratorConfig,
    count_params,
    num_ws_for,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Toy-sized ops: one thread is faster, and much faster while other jobs share the CPU (no OpenMP spinning)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TINY = {"channel_base": 128, "channel_max": 8}  # 8 channels up to 16 px, then halving: fast at any res


def tiny_models(res: int = 16, seed: int = 0):
    torch.manual_seed(seed)
    g = Generator(GeneratorConfig(res=res, z_dim=16, w_dim=16, n_types=3, mapping_layers=2, **TINY))
    e = Encoder(EncoderConfig.from_generator(g.cfg, **TINY))
    levels = (2, 4) if res == 16 else (4, 8)  # features need sides >= 4
    d = Discriminator(DiscriminatorConfig(res=res, n_types=3, feature_levels=levels, **TINY))
    return g, e, d


def onehot(types: list[int], n: int = 3) -> torch.Tensor:
    return F.one_hot(torch.tensor(types), n).float()


# ------------------------------------------------------------------------------------------------ ops


def test_assert_shape_names_the_dim():
    ops.assert_shape(torch.zeros(2, 3, 4), [None, 3, 4])
    with pytest.raises(ValueError, match="dim 1 should be 5"):
        ops.assert_shape(torch.zeros(2, 3, 4), [None, 5, 4], "x")
    with pytest.raises(ValueError, match="expected 2 dims"):
        ops.assert_shape(torch.zeros(2, 3, 4), [2, 3])


CONV_CASES = [  # (in channels, out channels, kernel, stride, padding, groups, input side)
    (3, 4, 3, 1, 1, 1, 6),
    (4, 6, 3, 1, 0, 2, 7),
    (3, 5, 1, 1, 0, 1, 5),
    (3, 4, 3, 2, 1, 1, 7),  # odd side: the adjoint needs output_padding
    (4, 4, 4, 2, 1, 4, 8),  # depthwise, the downsample shape
]


@pytest.mark.parametrize(("cin", "cout", "k", "stride", "pad", "groups", "side"), CONV_CASES)
def test_frozen_conv_gradcheck_and_matches_autograd(cin, cout, k, stride, pad, groups, side):
    torch.manual_seed(0)
    x = torch.randn(1, cin, side, side, dtype=torch.float64, requires_grad=True)
    w = torch.randn(cout, cin // groups, k, k, dtype=torch.float64)
    b = torch.randn(cout, dtype=torch.float64)

    def frozen(x):
        return ops.conv2d(x, w, b, stride=stride, padding=pad, groups=groups)

    assert torch.autograd.gradcheck(frozen, (x,), fast_mode=True)
    # frozen (custom adjoint) and trainable (plain F.conv2d) dispatch agree on values and input gradients
    wt = w.clone().requires_grad_(True)
    y0, y1 = frozen(x), ops.conv2d(x, wt, b, stride=stride, padding=pad, groups=groups)
    torch.testing.assert_close(y0, y1)
    gy = torch.randn_like(y0)
    (g0,) = torch.autograd.grad(y0, x, gy)
    g1, gw = torch.autograd.grad(y1, (x, wt), gy)
    torch.testing.assert_close(g0, g1)
    assert gw.abs().sum() > 0  # training still gets weight gradients


@pytest.mark.parametrize("op", ["up", "down"])
def test_resample_gradcheck_and_matches_autograd(op):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    k = ops.fir_kernel(3, gain=4.0 if op == "up" else 1.0).double()
    fn = ops.upsample2x if op == "up" else ops.downsample2x
    assert torch.autograd.gradcheck(lambda x: fn(x, k), (x,), fast_mode=True)
    y = fn(x, k)
    assert y.shape[-1] == (12 if op == "up" else 3)
    # reference: the same op through plain autograd (trainable-kernel dispatch)
    kt = k.clone().requires_grad_(True)
    yr = fn(x, kt)
    torch.testing.assert_close(y, yr)
    gy = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, x, gy)[0], torch.autograd.grad(yr, x, gy)[0])


def test_lrelu_gain_matches_autograd_and_double_backward():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    y = ops.lrelu_gain(x)
    ref = F.leaky_relu(x, 0.2) * 2**0.5
    torch.testing.assert_close(y, ref)
    assert torch.autograd.gradcheck(ops.lrelu_gain, (x,), fast_mode=True)
    gy = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, x, gy)[0], torch.autograd.grad(ref, x, gy)[0])
    # R1-style double backward: d/dg of (g * slope) must flow, as for the autograd leaky ReLU
    gy.requires_grad_(True)
    (gx,) = torch.autograd.grad(ops.lrelu_gain(x), x, gy, create_graph=True)
    (gx_ref,) = torch.autograd.grad(F.leaky_relu(x, 0.2) * 2**0.5, x, gy, create_graph=True)
    w = torch.randn_like(gx)
    ours, theirs = torch.autograd.grad((gx * w).sum(), gy)[0], torch.autograd.grad((gx_ref * w).sum(), gy)[0]
    torch.testing.assert_close(ours, theirs)


def test_upsample_keeps_constants_away_from_the_border():
    k = ops.fir_kernel(1, gain=4.0)
    y = ops.upsample2x(torch.ones(1, 1, 8, 8), k)
    torch.testing.assert_close(y[..., 2:-2, 2:-2], torch.ones(1, 1, 12, 12))
    torch.testing.assert_close(ops.downsample2x(torch.ones(1, 1, 8, 8), k / 4)[..., 1:-1, 1:-1], torch.ones(1, 1, 2, 2))


# ------------------------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize("res", [64, 128, 256])
def test_shapes_all_latent_paths(res):
    g, e, d = tiny_models(res)
    b, L = 2, g.num_ws
    assert L == num_ws_for(res) == g.cfg.num_ws == e.num_ws == 2 * (res.bit_length() - 1) - 2
    z, t = torch.randn(b, 16), onehot([0, 2])
    with torch.no_grad():
        img_z, m_z = g(z, t)
        w = g.mapping(z, t)
        img_w, m_w = g.synthesis(w)
        img_p, m_p = g.synthesis(w[:, None].expand(b, L, 16).contiguous())
        wp = e(img_p, torch.sigmoid(m_p))
        logit = d(img_p, torch.sigmoid(m_p), t)
        feats = d.features(img_p, m_p)
    assert w.shape == (b, 16)
    for img, m in [(img_z, m_z), (img_w, m_w), (img_p, m_p)]:
        assert img.shape == (b, 3, res, res) and m.shape == (b, 1, res, res)
    torch.testing.assert_close(img_w, img_p)  # w is w+ with all rows equal
    torch.testing.assert_close(img_z, img_w)
    assert wp.shape == (b, L, 16) and logit.shape == (b, 1)
    c4, c8 = d.cfg.channels(res // 4), d.cfg.channels(res // 8)
    assert feats.shape == (b, c4 * (res // 4) ** 2 + c8 * (res // 8) ** 2)


def test_bad_inputs_raise_value_errors():
    g, e, d = tiny_models(16)
    with pytest.raises(ValueError, match="w\\+: dim 1"):
        g.synthesis(torch.zeros(2, g.num_ws + 1, 16))
    with pytest.raises(ValueError, match="type_onehot"):
        g(torch.zeros(2, 16), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="noise_mode"):
        g.synthesis(torch.zeros(2, 16), noise_mode="fresh")
    with pytest.raises(ValueError, match="mask"):
        e(torch.zeros(2, 3, 16, 16), torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="res must be a power of two"):
        GeneratorConfig(res=48)
    with pytest.raises(ValueError, match="feature_levels"):
        DiscriminatorConfig(res=16, feature_levels=(8,))


def test_config_round_trip_rebuilds_identical_models():
    g, e, d = tiny_models(16, seed=1)
    for model, cls in [(g, Generator), (e, Encoder), (d, Discriminator)]:
        cfg = type(model.cfg)(**json.loads(json.dumps(asdict(model.cfg))))  # as stored in a checkpoint/manifest
        assert cfg == model.cfg
        clone = cls(cfg)
        clone.load_state_dict(model.state_dict())
        assert count_params(clone) == count_params(model) > 0
    torch.manual_seed(5)
    z, t, x, m = torch.randn(2, 16), onehot([1, 2]), torch.randn(2, 3, 16, 16), torch.rand(2, 1, 16, 16)
    g2 = Generator(GeneratorConfig(**asdict(g.cfg)))
    g2.load_state_dict(g.state_dict())
    torch.testing.assert_close(g2(z, t), g(z, t), rtol=0, atol=0)
    d2 = Discriminator(DiscriminatorConfig(**asdict(d.cfg)))
    d2.load_state_dict(d.state_dict())
    torch.testing.assert_close(d2(x, m, t), d(x, m, t), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ behaviour


def test_noise_modes_and_truncation():
    g, _, _ = tiny_models(16)
    for m in g.modules():  # noise strengths start at 0; make the noise visible
        if hasattr(m, "strength"):
            m.strength.data.fill_(0.5)
    w = torch.randn(2, 16)
    with torch.no_grad():
        a, b = g.synthesis(w)[0], g.synthesis(w)[0]
        r = g.synthesis(w, noise_mode="random")[0]
        n = g.synthesis(w, noise_mode="none")[0]
    torch.testing.assert_close(a, b)  # 'const' is deterministic (the export path)
    assert (a - r).abs().max() > 1e-3 and (a - n).abs().max() > 1e-3
    z, t = torch.randn(4, 16), onehot([0, 1, 2, 1])
    g.mapping.w_avg.copy_(torch.randn(3, 16))
    with torch.no_grad():
        w0 = g.mapping(z, t, truncation_psi=0.0)
    torch.testing.assert_close(w0, t @ g.w_avg)  # psi = 0 gives the type's mean w


def test_every_parameter_trains():
    g, e, d = tiny_models(16)
    e.head.weight.data.normal_()  # zero-init head: the trunk gets gradients from the second step on
    z, t = torch.randn(4, 16), onehot([0, 1, 2, 1])
    img, mlog = g(z, t, truncation_psi=0.5, noise_mode="random")
    logit = d(img, torch.sigmoid(mlog), t)
    (logit.sum() + e(img, torch.sigmoid(mlog)).square().sum()).backward()
    for model in (g, e, d):
        dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not dead, dead


def test_make_noise_redraws_the_constant_noise():
    g, _, _ = tiny_models(16)
    before = {k: v.clone() for k, v in g.state_dict().items() if k.endswith("noise.noise")}
    assert len(before) == 5  # conv1 + 2 convs per block (8 and 16 px); saved with the model
    g.make_noise(torch.Generator().manual_seed(7))
    assert all(not torch.equal(before[k], g.state_dict()[k]) for k in before)


def test_update_w_avg_per_type_and_mean_latent():
    g, _, _ = tiny_models(16)
    w, t = torch.tensor([[1.0] * 16, [3.0] * 16]), onehot([1, 1])
    g.mapping.update_w_avg(w, t, beta=0.5)
    torch.testing.assert_close(g.w_avg[1], torch.full((16,), 1.0))  # lerp(mean 2, 0, 0.5)
    torch.testing.assert_close(g.w_avg[[0, 2]], torch.zeros(2, 16))  # absent types untouched
    assert g.mean_latent(2, n=64).shape == (1, 16)
    with pytest.raises(ValueError, match="type_id"):
        g.mean_latent(3)


def test_untrained_encoder_returns_w_avg():
    g, e, _ = tiny_models(16)
    g.mapping.w_avg.copy_(torch.randn(3, 16))
    e.set_w_avg(g.w_avg)
    wp = e(torch.randn(2, 3, 16, 16), torch.rand(2, 1, 16, 16))
    torch.testing.assert_close(wp, g.w_avg.mean(0).expand(2, g.num_ws, 16))


def test_discriminator_depends_on_type_and_mask():
    torch.manual_seed(0)
    d = Discriminator(DiscriminatorConfig(res=16, feature_levels=(2, 4), n_types=3, **TINY))
    x, m = torch.randn(2, 3, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()
    with torch.no_grad():
        base = d(x, m, onehot([0, 0]))
        other_type = d(x, m, onehot([1, 2]))
        other_mask = d(x, 1 - m, onehot([0, 0]))
        f0, f1 = d.features(x, m), d.features(x, 1 - m)
    assert (base - other_type).abs().min() > 1e-4
    assert (base - other_mask).abs().min() > 1e-4
    assert (f0 - f1).abs().max() > 1e-3


def test_discriminator_r1_double_backward_when_trainable():
    _, _, d = tiny_models(16)
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    out = d(x, torch.rand(2, 1, 16, 16), onehot([0, 1]))
    (gx,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    gx.square().sum().backward()  # R1 penalty reaches the weights
    assert d.stem.from_img.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------ export


FORBIDDEN = ("convolution_backward", "scatter", "index_put", "upsample")


def _step_fn(g, e, d):
    """Inversion-like objective over a w+ latent: mask + background + features + domain terms, and its grad."""

    def step(wp, good, mask):
        with torch.enable_grad():
            wp = wp.detach().requires_grad_(True)
            img, mlog = g.synthesis(wp)
            t_mask = (torch.sigmoid(mlog) - mask).square().mean((1, 2, 3))
            t_bg = ((1 - mask) * (img - good)).square().mean((1, 2, 3))
            t_def = (d.features(mask * img, mask) - d.features(mask * good, mask)).square().mean(1)
            t_dom = (wp - e(img, torch.sigmoid(mlog))).square().mean((1, 2))
            terms = torch.stack([t_mask, t_bg, t_def, t_dom], 1)  # [B, 4]
            (grad,) = torch.autograd.grad(terms.sum(), wp)
        return terms.detach(), grad

    return step


@pytest.fixture(scope="module")
def traced_step():
    """(step, inputs, frozen G, make_fx graph of step): traced once, shared by the export tests."""
    from torch.fx.experimental.proxy_tensor import make_fx

    g, e, d = tiny_models(16)
    for m in (g, e, d):
        m.eval().requires_grad_(False)
    torch.manual_seed(3)
    wp = torch.randn(2, g.num_ws, 16)
    good = torch.rand(2, 3, 16, 16) * 2 - 1
    mask = torch.zeros(2, 1, 16, 16)
    mask[..., 4:8, 5:] = 1  # mask * good is all zero elsewhere: it caught a dropped epsilon (ops.EPS)
    step = _step_fn(g, e, d)
    args = (wp, good, mask)
    return step, args, g, make_fx(step)(*args)


def _forbidden(gm) -> list[str]:
    targets = {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}
    return sorted(t for t in targets if any(f in t for f in FORBIDDEN))


def test_frozen_backward_graph_has_only_exportable_ops(traced_step):
    from torch.fx.experimental.proxy_tensor import make_fx

    step, args, g, gm = traced_step
    assert not _forbidden(gm)
    assert any("convolution" in str(n.target) for n in gm.graph.nodes)
    torch.testing.assert_close(gm(*args), step(*args))
    # the z path adds the frozen mapping (MatMul type embedding, concat, pixel norm, truncation)
    z, t = torch.randn(2, 16), onehot([0, 2])

    def zstep(z, t):
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            return torch.autograd.grad(g.mapping(z, t, truncation_psi=0.7).square().sum(), z)[0]

    assert not _forbidden(make_fx(zstep)(z, t))


@pytest.mark.slow
def test_step_graph_exports_to_onnx_and_matches_torch(traced_step, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    step, args, _, gm = traced_step

    class Traced(torch.nn.Module):
        def __init__(self, gm):
            super().__init__()
            self.gm = gm

        def forward(self, wp, good, mask):
            return tuple(self.gm(wp, good, mask))

    path = tmp_path / "step.onnx"
    names = ["latent", "good", "mask"]
    torch.onnx.export(
        Traced(gm), args, str(path), dynamo=True, opset_version=18, input_names=names, output_names=["terms", "grad"]
    )
    op_types = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert not op_types & {"ScatterND", "ScatterElements", "Resize"}, op_types
    assert {"Conv", "ConvTranspose"} <= op_types
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    terms, grad = sess.run(None, {k: v.numpy() for k, v in zip(names, args, strict=True)})
    terms_t, grad_t = step(*args)
    for o, t in [(terms, terms_t), (grad, grad_t)]:
        rel = abs(o - t.numpy()).max() / abs(t.numpy()).max()
        assert rel < 1e-4, rel
