"""The patch encoder at toy size (window 16, a 2-step tiny patch GAN as G): shapes, start at w_avg, inpainted
goods, held-out split, loss going down, exact resume, report scores."""

from __future__ import annotations

import pytest
import torch

from defectgen.data.procedural import make_dataset
from defectgen.errors import DataError
from defectgen.training.checkpoint import load_encoder, read_checkpoint
from defectgen.training.config import TrainPatchConfig, TrainPatchEncoderConfig, replace
from defectgen.training.patch_encoder import (
    build_state,
    draw_batch,
    load_patch_run,
    load_train_windows,
    losses,
    total,
    train_patch_encoder,
)
from defectgen.training.patch_encoder_data import Windows, held_out_names, inpaint_goods, real_windows
from defectgen.training.patch_encoder_report import encoder_start, evaluate, start_latent
from defectgen.training.patch_gan import train_patch

P = 16


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("penc")
    data = root / "nuts"
    make_dataset(data, res=48, n_good=4, n_defect=7, n_test_good=2, seed=2)
    train_patch(TrainPatchConfig(data=str(data), window=P, steps=2, batch=4, per_defect=2, per_good=2, log_every=1,
                                 sample_every=2, ckpt_every=2, grid_per_type=2), root / "patch", tiny=True,
                progress=False)
    return data, root / "patch"


def cfg(setup, steps, **kw):
    data, patch = setup
    base = dict(data=str(data), patch=str(patch), steps=steps, batch=4, channel_base=128, channel_max=16,
                per_defect=2, per_good=2, eval_samples=8, eval_per_defect=1, log_every=1, sample_every=2,
                ckpt_every=2)
    return TrainPatchEncoderConfig(**{**base, **kw})


def test_encoder_fits_the_patch_g_and_starts_at_w_avg(setup):
    run = load_patch_run(setup[1])
    st = build_state(cfg(setup, 1), run)
    x = torch.rand(3, 3, P, P) * 2 - 1
    m = (torch.rand(3, 1, P, P) > 0.8).float()
    wp = st.E(x, m)
    assert wp.shape == (3, run.G.num_ws, run.G.cfg.w_dim)
    assert torch.allclose(wp, run.G.w_avg.mean(0).expand_as(wp))  # zero head: the mean of the types' w_avg
    colour, logit = run.G.synthesis(wp, x)
    assert colour.shape == (3, 3, P, P) and logit.shape == (3, 1, P, P)
    # type_start: the untrained start is the target type's own mean w (the runtime's start without an encoder)
    win = Windows(x, m, x, torch.tensor([0, 2, 3]))
    assert torch.allclose(encoder_start(st.E, run.G, win, True), start_latent(st.E, run.G, win, "w_avg"), atol=1e-6)


def test_inpainted_good_equals_the_window_away_from_the_defect():
    x = torch.rand(2, 3, P, P) * 2 - 1
    m = torch.zeros(2, 1, P, P)
    m[0, 0, 5:8, 6:10] = 1  # the second window has no defect
    g = inpaint_goods(x, m)
    assert torch.equal(g[1], x[1])
    far = torch.ones(P, P, dtype=torch.bool)
    far[4:9, 5:11] = False  # the mask grown by DILATE = 1
    assert torch.equal(g[0][:, far], x[0][:, far])
    assert not torch.equal(g[0][:, 5:8, 6:10], x[0][:, 5:8, 6:10])


def test_held_out_real_windows_come_from_images_the_gan_did_not_see(setup):
    data, patch = setup
    run = load_patch_run(patch)
    names = held_out_names(data, run.held_in)
    assert names["crack"] == ["003.png", "004.png", "005.png", "006.png"]  # held in: first third of 7
    win = real_windows(data, names, run.types, window=P, scale=1.0, per_image=2, seed=0)
    assert len(win) == 4 * 4 * 2 and win.goods.shape == win.images.shape
    with pytest.raises(DataError, match="lacks the patch run's held-in"):
        held_out_names(data, {"crack": ["999.png"]})


def test_batch_is_half_g_samples_with_known_latent(setup):
    c = cfg(setup, 1, batch=6)
    run = load_patch_run(setup[1])
    st = build_state(c, run)
    data = load_train_windows(c, run)
    torch.manual_seed(0)
    x, wp = draw_batch(st, data)
    assert len(x) == 6 and wp.shape == (3, run.G.num_ws, run.G.cfg.w_dim)
    assert set(x.masks.unique().tolist()) <= {0.0, 1.0}
    terms = losses(st, x, wp)
    assert set(terms) == {"pix", "mask", "dice", "latent"} and all(torch.isfinite(v) for v in terms.values())
    assert 0 <= terms["dice"].item() <= 1
    st.cfg = replace(c, w_feat=0.1, w_dice=0.0, type_start=True)
    assert set(losses(st, x, wp)) == {"pix", "mask", "latent", "feat"}


def test_a_few_steps_lower_the_loss(setup, tmp_path):
    c = cfg(setup, 1, batch=8, lr=0.01)
    run = load_patch_run(setup[1])
    st = build_state(c, run)
    data = load_train_windows(c, run)
    torch.manual_seed(1)
    x, wp = draw_batch(st, data)
    with torch.no_grad():
        before = total(c, losses(st, x, wp)).item()
    res = train_patch_encoder(replace(c, steps=12), tmp_path / "e", progress=False)
    st.E.load_state_dict(res.state.E.state_dict())
    with torch.no_grad():
        after = total(c, losses(st, x, wp)).item()
    assert after < before


def test_resume_is_bit_exact_and_the_encoder_loads(setup, tmp_path):
    full = train_patch_encoder(cfg(setup, 4), tmp_path / "full", progress=False)
    train_patch_encoder(cfg(setup, 2), tmp_path / "half", progress=False)
    resumed = train_patch_encoder(cfg(setup, 4), tmp_path / "half", resume=True, progress=False)
    assert full.step == resumed.step == 4
    a, b = read_checkpoint(tmp_path / "full"), read_checkpoint(tmp_path / "half")
    assert a.meta["kind"] == "patch_encoder" and set(a.tensors) == set(b.tensors)
    for k in a.tensors:
        if not k.startswith("rng."):
            assert torch.equal(a.tensors[k], b.tensors[k]), k
    assert full.history[-1] == resumed.history[-1]
    E = load_encoder(tmp_path / "full")
    assert E.cfg.res == P and not any(p.requires_grad for p in E.parameters())


def test_report_scores_both_starts_on_both_held_out_sets(setup, tmp_path):
    res = train_patch_encoder(cfg(setup, 2), tmp_path / "r", progress=False)
    rep = res.report["held_out"]
    assert rep["real"]["n"] == 4 * 4 and 0 < rep["g_samples"]["n"] <= 8
    for name in ("real", "g_samples"):
        for init in ("encoder", "w_avg"):
            s = rep[name][init]
            assert 0 <= s["mask_iou"] <= 1 and s["psnr_db"] > 0 and set(s["per_type"]) <= set(res.state.run.types)
    assert "latent_mse" in rep["g_samples"]["w_avg"] and "latent_mse" not in rep["real"]["w_avg"]
    # the w_avg start does not depend on E
    st, run = res.state, res.state.run
    from defectgen.training.patch_encoder import held_out_sets

    again = evaluate(build_state(cfg(setup, 1), run).E, run.G, held_out_sets(st.cfg, run), run.types)
    assert again["real"]["w_avg"] == rep["real"]["w_avg"]
