"""Training at toy size: losses go down, checkpoints round-trip, resume replays exactly, reports are written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from defectgen.data.procedural import make_dataset
from defectgen.errors import DataError
from defectgen.nets.stylegan import Discriminator, Generator
from defectgen.training.augment import adaptive, augment, next_ada_p, parse_policy
from defectgen.training.checkpoint import (
    load_discriminator,
    load_encoder,
    load_generator,
    read_checkpoint,
    slim_checkpoint,
)
from defectgen.training.config import ConfigError, TrainEncoderConfig, TrainGanConfig, from_dict, to_dict
from defectgen.training.dataset import Sampler, load_training_set
from defectgen.training.encoder import train_encoder
from defectgen.training.gan import tiny_model_configs, train_gan
from defectgen.training.losses import GanLoss
from defectgen.training.patch_gan import shape_policy
from defectgen.training.vgg import VGG16Features

RES = 16


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "nuts"
    make_dataset(root, res=32, n_good=8, n_defect=3, n_test_good=1, seed=0)
    return root


def gan_cfg(data, steps: int, **kw) -> TrainGanConfig:
    batch = 4
    return TrainGanConfig(data=str(data), res=RES, kimg=steps * batch / 1000, batch=batch, r1_interval=2,
                          log_every=1, sample_every=2, ckpt_every=kw.pop("ckpt_every", 3), grid_per_type=2, **kw)


def run_gan(data, out, steps: int, resume: bool = False, **kw):
    g, d = tiny_model_configs(RES)
    return train_gan(gan_cfg(data, steps, **kw), out, g_cfg=g, d_cfg=d, resume=resume, progress=False,
                     device="cpu")


@pytest.fixture(scope="module")
def gan_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("gan") / "run"
    return run_gan(data, out, 4)


def test_config_round_trip():
    cfg = TrainGanConfig(data="x", betas=(0.1, 0.9), augment="flip")
    assert from_dict(TrainGanConfig, json.loads(json.dumps(to_dict(cfg)))) == cfg
    with pytest.raises(ValueError, match="no field"):
        from_dict(TrainGanConfig, {"bogus": 1})
    assert TrainGanConfig(kimg=1, batch=16).total_steps(2) == 32


def test_augment_moves_image_and_mask_together():
    torch.manual_seed(0)
    img = torch.rand(8, 3, RES, RES) * 2 - 1
    mask = (img[:, :1] > 0).float()
    a_img, a_mask = augment(img, mask, "translation,flip,flipv")
    # the mask was derived from channel 0, so the same geometry must keep that relation exactly
    assert torch.equal(a_mask, (a_img[:, :1] > 0).float())
    assert not torch.equal(a_img, img)
    _, c_mask = augment(img, mask, "color")
    assert torch.equal(c_mask, mask)  # colour never touches the mask
    with pytest.raises(ConfigError, match="did you mean 'flip'"):
        parse_policy("flp")


def test_colour_strength_scales_the_ranges_and_full_strength_is_diffaugments():
    img = torch.zeros(4096, 3, 2, 2)
    img[:, 0] = 0.4  # a reddish surface: saturation and contrast have something to scale
    mask = torch.zeros(4096, 1, 2, 2)
    torch.manual_seed(0)
    full, _ = augment(img, mask, "color")
    torch.manual_seed(0)
    r = [torch.rand(4096, 1, 1, 1) for _ in range(3)]  # brightness, saturation, contrast: DiffAugment's draws
    x = img + (r[0] - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (r[1] * 2) + mean
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    assert torch.equal(full, (x - mean) * (r[2] + 0.5) + mean)  # bit for bit: old runs resume unchanged
    torch.manual_seed(0)
    half, _ = augment(img, mask, "color:0.5")
    shift = (half - img).mean(dim=(1, 2, 3))
    assert shift.abs().max() <= 0.25 + 1e-6 < (full - img).mean(dim=(1, 2, 3)).abs().max()
    assert parse_policy("translation, color:0.5") == [("translation", 1.0), ("color", 0.5)]
    assert shape_policy("translation,color:0.5") == "translation"  # the mask-only D never gets colour
    for bad in ("color:0", "color:1.5", "color:x", "translation:0.5"):
        with pytest.raises(ConfigError, match="augmentation"):
            parse_policy(bad)


def test_adaptive_ops_keep_the_mask_on_its_pixels_and_vanish_at_p0():
    torch.manual_seed(0)
    img = torch.rand(64, 3, RES, RES) * 2 - 1
    mask = (img[:, :1] > 0).float()
    assert adaptive(img, mask, 0.0) == (img, mask)
    a_img, a_mask = adaptive(img, mask, 1.0)
    assert not torch.equal(a_img, img)
    # wherever the mask survives (not cut out, not zoomed off), it still marks positive channel-0 pixels
    inside = a_mask > 0.99
    assert inside.any() and (a_img[:, :1][inside] > -0.05).all()
    assert torch.equal(a_mask == 0, a_mask <= 0)  # no negative mask values
    some = adaptive(img, mask, 0.3)[0]
    touched = (some != img).flatten(1).any(1).float().mean().item()
    assert 0.3 < touched < 0.9  # three ops at p = 0.3: 1 - 0.7^3 = 0.66 of the samples


def test_ada_p_rises_while_d_is_too_sure_and_stays_in_0_1():
    assert next_ada_p(0.0, 0.8, 0.6, images=32, kimg=1) == pytest.approx(0.032)
    assert next_ada_p(0.5, 0.2, 0.6, images=32, kimg=1) == pytest.approx(0.468)
    assert next_ada_p(0.0, 0.1, 0.6, images=32, kimg=1) == 0.0
    assert next_ada_p(0.99, 0.9, 0.6, images=32, kimg=0.1) == 1.0


def test_sampler_oversamples_defects_and_is_stateless():
    types = torch.tensor([0] * 90 + [1] * 5 + [2] * 5)
    s = Sampler(types, good_share=0.5, seed=0, batch=2000)
    idx = s.indices(3)
    assert abs((types[idx] == 0).float().mean().item() - 0.5) < 0.05
    assert np.array_equal(idx, s.indices(3))
    # two ranks take disjoint halves of the same global batch
    r0, r1 = (Sampler(types, good_share=0.5, seed=0, batch=1000, rank=r, world_size=2).indices(3) for r in (0, 1))
    assert np.array_equal(np.concatenate([r0, r1]), idx)


def test_d_steps_reduce_d_loss_on_fixed_batch(data):
    torch.manual_seed(0)
    train, _ = load_training_set(data, RES)
    g_cfg, d_cfg = tiny_model_configs(RES, len(train.type_names))
    G, D = Generator(g_cfg).requires_grad_(False), Discriminator(d_cfg)
    loss = GanLoss(G, D, policy="", r1_gamma=0.0, r1_interval=0)
    opt = torch.optim.Adam(D.parameters(), lr=2e-3, betas=(0.0, 0.99))
    z = torch.randn(8, g_cfg.z_dim)
    x, m, t = train.images[:8], train.masks[:8], train.types[:8]
    losses = []
    for _ in range(8):
        opt.zero_grad()
        torch.manual_seed(1)  # same G noise each step: a truly fixed batch
        losses.append(loss.accumulate_d(z, t, x, m, t, do_r1=False)["loss_D"])
        opt.step()
    assert losses[-1] < losses[0] - 0.1, losses


def test_gan_run_folder_and_checkpoint_round_trip(gan_run):
    out = gan_run.out
    for name in ("config.json", "checkpoint.safetensors", "log.jsonl", "report.json", "report.png",
                 "samples/000002.png", "samples/000004.png"):
        assert (out / name).is_file(), name
    ck = read_checkpoint(out)
    st = gan_run.state
    assert ck.step == 4 and ck.meta["defect_types"] == ["good", "crack", "cut", "hole", "print"]
    assert ck.configs == st.configs()
    assert json.loads((out / "config.json").read_text())["generator"] == ck.configs["generator"]
    G = load_generator(out)
    for k, v in st.G_ema.state_dict().items():
        assert torch.equal(G.state_dict()[k], v), k
    D = load_discriminator(out)
    assert all(torch.equal(D.state_dict()[k], v) for k, v in st.D.state_dict().items())
    opt_keys = [k for k in ck.tensors if k.startswith("opt_D.state.")]
    assert opt_keys and all(torch.isfinite(ck.tensors[k]).all() for k in opt_keys)
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4] and "loss_D" in lines[0]
    rep = json.loads((out / "report.json").read_text())
    assert set(rep["per_type"]) == set(ck.meta["defect_types"])


def test_resume_is_exact(data, tmp_path):
    straight = run_gan(data, tmp_path / "a", 6)
    run_gan(data, tmp_path / "b", 3)
    resumed = run_gan(data, tmp_path / "b", 6, resume=True)
    assert resumed.history == straight.history[3:]
    for name in ("G", "G_ema", "D"):
        a, b = getattr(straight.state, name).state_dict(), getattr(resumed.state, name).state_dict()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}.{k}"


def test_new_run_refuses_existing_and_resume_needs_checkpoint(gan_run, data, tmp_path):
    with pytest.raises(DataError, match="already holds a run"):
        run_gan(data, gan_run.out, 1)
    with pytest.raises(DataError, match="no checkpoint"):
        run_gan(data, tmp_path / "empty", 1, resume=True)


def test_slim_checkpoint_loads_but_cannot_resume(gan_run, tmp_path):
    dst = slim_checkpoint(gan_run.out / "checkpoint.safetensors", tmp_path / "slim" / "checkpoint.safetensors")
    ck = read_checkpoint(dst)
    assert {k.split(".")[0] for k in ck.tensors} == {"G_ema", "D"}
    assert ck.meta["slim"] and "optim" not in ck.meta
    load_generator(dst)
    assert dst.stat().st_size < (gan_run.out / "checkpoint.safetensors").stat().st_size


@pytest.fixture(scope="module")
def encoder_run(gan_run, data, tmp_path_factory):
    cfg = TrainEncoderConfig(data=str(data), gan=str(gan_run.out), steps=4, batch=4, log_every=1,
                             sample_every=2, ckpt_every=2, holdout=0.2)
    return train_encoder(cfg, tmp_path_factory.mktemp("enc") / "run", progress=False, device="cpu")


def test_encoder_run_writes_report_and_loads(encoder_run, gan_run):
    out = encoder_run.out
    rep = json.loads((out / "report.json").read_text())
    held = rep["held_out"]
    assert held["n"] > 0 and held["n_defective"] > 0
    assert np.isfinite(held["psnr_db"]) and 0.0 <= held["mask_iou"] <= 1.0
    assert (out / "report.png").is_file() and (out / "samples" / "000004.png").is_file()
    E = load_encoder(out)
    G = load_generator(gan_run.out)
    assert torch.allclose(E.w_avg, G.mapping.w_avg.mean(0))
    x = torch.zeros(2, 3, RES, RES)
    assert E(x, torch.zeros(2, 1, RES, RES)).shape == (2, G.num_ws, G.cfg.w_dim)
    ck = read_checkpoint(out)
    assert ck.meta["kind"] == "encoder" and ck.configs["generator"] == read_checkpoint(gan_run.out).configs[
        "generator"]
    with pytest.raises(DataError, match="not an encoder run"):
        load_encoder(gan_run.out)


def test_encoder_steps_reduce_reconstruction(gan_run, data):
    torch.manual_seed(0)
    G = load_generator(gan_run.out)
    from defectgen.nets.encoder import Encoder, EncoderConfig

    E = Encoder(EncoderConfig.from_generator(G.cfg))
    E.set_w_avg(G.mapping.w_avg)
    train, _ = load_training_set(data, RES)
    x, m = train.images[:8], train.masks[:8]
    opt = torch.optim.Adam(E.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        opt.zero_grad()
        loss = (G.synthesis(E(x, m))[0] - x).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.9, losses


def test_encoder_resume_is_exact(gan_run, data, tmp_path):
    def cfg(steps):
        return TrainEncoderConfig(data=str(data), gan=str(gan_run.out), steps=steps, batch=4, ckpt_every=2,
                                  sample_every=100, r1_interval=2)

    a = train_encoder(cfg(4), tmp_path / "a", progress=False, device="cpu")
    train_encoder(cfg(2), tmp_path / "b", progress=False, device="cpu")
    b = train_encoder(cfg(4), tmp_path / "b", resume=True, progress=False, device="cpu")
    assert b.history == a.history[2:]
    assert all(torch.equal(v, b.state.E.state_dict()[k]) for k, v in a.state.E.state_dict().items())


def test_encoder_init_from_starts_at_the_source_weights(gan_run, encoder_run, data, tmp_path, monkeypatch):
    """--init-from (a slim copy here) loads E and D, keeps fresh optimisers, and is recorded in the config."""
    from defectgen.training.slim import export_slim

    export_slim(encoder_run.out, tmp_path / "src")
    cfg = TrainEncoderConfig(data=str(data), gan=str(gan_run.out), steps=1, batch=4, sample_every=100,
                             init_from=str(tmp_path / "src"))
    captured = {}
    import defectgen.training.encoder as enc_mod

    real_step = enc_mod.encoder_step

    def spy(st, *args, **kwargs):  # the weights the first step starts from
        captured.setdefault("E", {k: v.clone() for k, v in st.E.state_dict().items()})
        captured.setdefault("D", {k: v.clone() for k, v in st.D.state_dict().items()})
        captured.setdefault("opt_state", len(st.opt_E.state))
        return real_step(st, *args, **kwargs)

    monkeypatch.setattr(enc_mod, "encoder_step", spy)
    res = train_encoder(cfg, tmp_path / "warm", progress=False, device="cpu")
    src = encoder_run.state
    assert all(torch.equal(v, captured["E"][k]) for k, v in src.E.state_dict().items())
    assert all(torch.equal(v, captured["D"][k]) for k, v in src.D.state_dict().items())
    assert captured["opt_state"] == 0  # fresh Adam
    assert res.step == 1
    assert json.loads((tmp_path / "warm" / "config.json").read_text())["train_encoder"]["init_from"] == str(
        tmp_path / "src")
    with pytest.raises(DataError, match="--init-from must be an encoder run"):
        train_encoder(TrainEncoderConfig(data=str(data), gan=str(gan_run.out), steps=1, batch=4,
                                         init_from=str(gan_run.out)), tmp_path / "bad", progress=False, device="cpu")


def test_vgg16_trunk_loads_torchvision_names(tmp_path):
    net = VGG16Features()
    sd = {f"features.{i}.{n}": torch.randn_like(t) for i, c in net.convs.items() for n, t in c.state_dict().items()}
    save_file(sd, tmp_path / "vgg.safetensors")
    loaded = VGG16Features.from_safetensors(tmp_path / "vgg.safetensors")
    assert torch.equal(loaded.convs["0"].weight, sd["features.0.weight"])
    assert loaded(torch.zeros(1, 3, 32, 32)).shape == (1, 512, 4, 4)
    del sd["features.21.bias"]
    save_file(sd, tmp_path / "bad.safetensors")
    with pytest.raises(DataError, match=r"lack 21\.bias"):
        VGG16Features.from_safetensors(tmp_path / "bad.safetensors")


def test_export_slim_copies_nets_and_side_files(gan_run, encoder_run, tmp_path):
    from defectgen.training.slim import export_slim

    written = {p.name for p in export_slim(gan_run.out, tmp_path / "gan")}
    assert {"checkpoint.safetensors", "config.json", "report.json", "report.png", "samples.png"} <= written
    assert {k.split(".")[0] for k in read_checkpoint(tmp_path / "gan").tensors} == {"G", "G_ema", "D"}
    export_slim(encoder_run.out, tmp_path / "enc")
    assert {k.split(".")[0] for k in read_checkpoint(tmp_path / "enc").tensors} == {"E", "D"}
    load_encoder(tmp_path / "enc")
    with pytest.raises(DataError, match="slim"):
        train_encoder(TrainEncoderConfig(data=encoder_run.state.cfg.data, gan=str(gan_run.out), steps=5, batch=4),
                      tmp_path / "enc", resume=True, progress=False, device="cpu")


def test_segmenter_guided_masks_are_saved_and_resumed(data, tmp_path):
    a = run_gan(data, tmp_path / "seg", 2, mask_seg=1.0, seg_steps=3, ckpt_every=1)
    assert a.state.S is not None and "loss_G_seg" in a.history[0]
    ck = read_checkpoint(tmp_path / "seg")
    assert ck.has("S") and set(ck.meta["segmenter"]) >= {"train_iou_defective", "train_fp_good"}
    b = run_gan(data, tmp_path / "seg", 3, resume=True, mask_seg=1.0, seg_steps=3)
    assert all(torch.equal(v, b.state.S.state_dict()[k]) for k, v in a.state.S.state_dict().items())
