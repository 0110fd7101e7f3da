"""`defectgen train encoder`: the idinvert domain-guided encoder E(image, mask) -> w+ for a frozen generator.

Losses on E (Zhu et al. 2020, sec. 3.1, plus the mask head of defectgen):
    w_pix    · mean((G(E(x)) − x)²)                      pixel reconstruction
    w_feat   · mean((F(G(E(x)), m) − F(x, m))²)          perceptual: the *frozen* GAN discriminator's trunk
                                                         features (or VGG16 relu4_3 with --vgg)
    w_adv    · softplus(−D(G(E(x))))                     adversarial, against a discriminator fine-tuned on
                                                         reals vs reconstructions (keeps codes in-domain)
    w_mask   · BCE(G_mask(E(x)), m)                      the generated mask follows the input mask
    w_latent · mean((E(G(w+)) − w+)²)                    on generator samples, whose latent is known
Each batch is half real images (train/good + defective, minus a held-out `holdout` fraction for the report)
and half G_ema samples. The generator never changes; `E.w_avg` is set from its mapping network first.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from defectgen.errors import DataError
from defectgen.nets.encoder import Encoder, EncoderConfig
from defectgen.nets.stylegan import Discriminator, Generator, GeneratorConfig
from defectgen.training import dist
from defectgen.training.augment import augment
from defectgen.training.checkpoint import (
    CKPT_NAME,
    Checkpoint,
    load_discriminator,
    load_generator,
    load_optimizer,
    read_checkpoint,
    restore_rng,
)
from defectgen.training.checkpoint import save_checkpoint as _save
from defectgen.training.common import RunLogger, prepare_run_dir, set_trainable, step_seed, write_config
from defectgen.training.config import ConfigError, TrainEncoderConfig, from_dict, to_dict
from defectgen.training.dataset import Sampler, TrainData, load_training_set
from defectgen.training.losses import mask_for_d, onehot
from defectgen.training.report import iou, pair_cells, psnr, write_grid, write_json
from defectgen.training.vgg import VGG16Features


@dataclass
class EncoderState:
    E: Encoder
    D: Discriminator  # fine-tuned copy of the GAN's D (adversarial term)
    opt_E: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    cfg: TrainEncoderConfig
    e_cfg: EncoderConfig
    gan_meta: dict[str, Any]  # generator/discriminator configs, types and train_gan config of the GAN run
    step: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def types(self) -> list[str]:
        return list(self.gan_meta["defect_types"])

    def save(self, out: Path) -> Path:
        configs = {**self.gan_meta["configs"], "encoder": to_dict(self.e_cfg), "train_encoder": to_dict(self.cfg)}
        return _save(out / CKPT_NAME, kind="encoder", step=self.step, modules={"E": self.E, "D": self.D},
                     optimizers={"opt_E": self.opt_E, "opt_D": self.opt_D}, configs=configs,
                     extra={"defect_types": self.types, "gan": self.gan_meta["gan"], **self.extra})


@dataclass
class Frozen:
    """The nets the encoder trains against, never updated."""

    G: Generator  # G_ema of the GAN run
    F: torch.nn.Module  # feature extractor: frozen D copy (features) or VGG16

    def features(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if isinstance(self.F, Discriminator):
            return self.F.features(image, mask)
        return self.F(image).flatten(1)


@dataclass
class EncoderResult:
    out: Path
    step: int
    history: list[dict[str, float]]
    state: EncoderState
    report: dict[str, Any] | None = None


def _gan_meta(gan: str | os.PathLike[str]) -> tuple[Checkpoint, dict[str, Any]]:
    ck = read_checkpoint(gan)
    if ck.meta.get("kind") != "gan":
        msg = f"--gan must be a GAN run or checkpoint, {ck.path} is a {ck.meta.get('kind')!r} checkpoint"
        raise DataError(msg)
    keep = ("generator", "discriminator", "train_gan")
    return ck, {"configs": {k: ck.configs[k] for k in keep if k in ck.configs},
                "defect_types": ck.meta["defect_types"], "gan": {"path": str(ck.path), "step": ck.step}}


def build_state(cfg: TrainEncoderConfig, gan_meta: dict[str, Any], G: Generator, D: Discriminator,
                device: str) -> EncoderState:
    torch.manual_seed(cfg.seed)
    e_cfg = EncoderConfig.from_generator(G.cfg)
    E = Encoder(e_cfg).to(device)
    E.set_w_avg(G.mapping.w_avg)  # start at the centre of the generator's domain (idinvert)
    D = copy.deepcopy(D).train().requires_grad_(True)
    return EncoderState(E=E, D=D, opt_E=torch.optim.Adam(E.parameters(), lr=cfg.lr_e, betas=cfg.betas),
                        opt_D=torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=cfg.betas),
                        cfg=cfg, e_cfg=e_cfg, gan_meta=gan_meta)


@torch.no_grad()
def _samples(G: Generator, types: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """G samples of the given types: (image, binary mask, w+) with the constant noise the runtime uses."""
    z = torch.randn(types.shape[0], G.cfg.z_dim, device=types.device)
    w = G.mapping(z, onehot(types, G.cfg.n_types))
    wp = w[:, None].repeat(1, G.num_ws, 1)  # [B, L, W]
    img, logit = G.synthesis(wp, noise_mode="const")
    return img, (logit > 0).float(), wp


def encoder_step(st: EncoderState, fz: Frozen, data: TrainData, sampler: Sampler, info: dist.DistInfo,
                 policy: str, mask_ste: bool) -> dict[str, float]:
    """One E step (real + synthetic halves) and, when enabled, one D fine-tuning step (+ lazy R1).

    `policy` and `mask_ste` are the GAN run's: D keeps seeing inputs the way it was trained.
    """
    cfg, step = st.cfg, st.step
    torch.manual_seed(step_seed(cfg.seed, step, info.rank))
    idx = torch.as_tensor(sampler.indices(step), device=data.images.device)
    n_real = max(1, cfg.batch // 2)
    x_r, m_r, t_r = data.images[idx[:n_real]], data.masks[idx[:n_real]], data.types[idx[:n_real]]
    t_s = data.types[idx[n_real:]]
    x_s, m_s, wp_s = _samples(fz.G, t_s)
    x, m, t = torch.cat([x_r, x_s]), torch.cat([m_r, m_s]), torch.cat([t_r, t_s])
    c = onehot(t, len(st.types))

    set_trainable(st.E, True)
    set_trainable(st.D, False)
    st.opt_E.zero_grad(set_to_none=True)
    wp = st.E(x, m)  # [B, L, W]
    rec, logit = fz.G.synthesis(wp, noise_mode="const")
    l_pix = (rec - x).square().mean()
    l_feat = (fz.features(rec, m) - fz.features(x, m)).square().mean()
    l_adv = F.softplus(-st.D(*augment(rec, mask_for_d(logit, mask_ste), policy), c)).mean()
    l_mask = F.binary_cross_entropy_with_logits(logit, m)
    l_lat = (wp[n_real:] - wp_s).square().mean() if t_s.numel() else torch.zeros(())
    loss = cfg.w_pix * l_pix + cfg.w_feat * l_feat + cfg.w_adv * l_adv + cfg.w_mask * l_mask + cfg.w_latent * l_lat
    loss.backward()
    dist.sync_grads(st.E.parameters(), info)
    st.opt_E.step()
    stats = {"loss_E": loss.item(), "pix": l_pix.item(), "feat": l_feat.item(), "adv": l_adv.item(),
             "mask": l_mask.item(), "latent": l_lat.item()}

    if cfg.train_d:
        set_trainable(st.D, True)
        st.opt_D.zero_grad(set_to_none=True)
        fake = st.D(*augment(rec.detach(), mask_for_d(logit, mask_ste).detach(), policy), c)
        with torch.no_grad():
            a_img, a_mask = augment(x_r, m_r, policy)
        do_r1 = cfg.r1_interval > 0 and cfg.r1_gamma > 0 and step % cfg.r1_interval == 0
        a_img.requires_grad_(do_r1)
        real = st.D(a_img, a_mask, c[:n_real])
        l_d = F.softplus(fake).mean() + F.softplus(-real).mean()
        stats["loss_D"] = l_d.item()
        if do_r1:
            (g,) = torch.autograd.grad(real.sum(), [a_img], create_graph=True)
            l_d = l_d + g.square().sum([1, 2, 3]).mean() * (cfg.r1_gamma / 2) * cfg.r1_interval
        l_d.backward()
        dist.sync_grads(st.D.parameters(), info)
        st.opt_D.step()
    st.step += 1
    return dist.mean_over_ranks(stats, info)


@torch.no_grad()
def evaluate(E: Encoder, G: Generator, held: TrainData, batch: int = 32) -> dict[str, Any]:
    """PSNR of G(E(x)) vs x on held-out reals; mask IoU of sigmoid(G_mask(E(x))) > 0.5 on the defective ones."""
    if len(held) == 0:
        return {"n": 0}
    ps, ious, base = [], [], []
    w_avg = E.w_avg[None, None].expand(1, E.num_ws, -1)
    for i in range(0, len(held), batch):
        x, m = held.images[i:i + batch], held.masks[i:i + batch]
        rec, logit = G.synthesis(E(x, m), noise_mode="const")
        ps.append(psnr(rec, x))
        ious.append(iou((logit > 0).float(), m))
        base.append(psnr(G.synthesis(w_avg.expand(x.shape[0], -1, -1), noise_mode="const")[0], x))
    ps_t, iou_t, base_t = torch.cat(ps), torch.cat(ious), torch.cat(base)
    defective = (held.types != 0).to(ps_t.device)
    per_type = {}
    for k, name in enumerate(held.type_names):
        sel = (held.types == k).to(ps_t.device)
        if sel.any():
            per_type[name] = {"n": int(sel.sum()), "psnr_db": round(float(ps_t[sel].mean()), 3),
                              **({"mask_iou": round(float(iou_t[sel].mean()), 4)} if k else {})}
    return {"n": len(held), "psnr_db": round(float(ps_t.mean()), 3),
            "psnr_db_w_avg_baseline": round(float(base_t.mean()), 3),
            "mask_iou": round(float(iou_t[defective].mean()), 4) if defective.any() else None,
            "n_defective": int(defective.sum()), "per_type": per_type}


def _encoder_report(st: EncoderState, G: Generator, held: TrainData, out: Path, wall_s: float) -> dict[str, Any]:
    rep = {"kind": "encoder", "step": st.step, "wall_s_this_call": round(wall_s, 1),
           "held_out": {"paths": held.paths, **evaluate(st.E, G, held)},
           "notes": "psnr on [0,1] images; mask_iou over defective held-out images only; "
                    "baseline = G(w_avg) without the encoder"}
    write_json(out / "report.json", rep)
    with torch.no_grad():  # report.png: per held-out image, input | mask, then G(E(x)) | generated mask
        bad = torch.nonzero(held.types != 0).flatten().tolist()[:8]  # defective first: they show masks
        good = torch.nonzero(held.types == 0).flatten().tolist()[:16 - len(bad)]
        sel = held.subset(bad + good) if len(held) else held
        if len(sel):
            rec, logit = G.synthesis(st.E(sel.images, sel.masks), noise_mode="const")
            a, b = pair_cells(sel.images, sel.masks), pair_cells(rec, (logit > 0).float())
            rows = [[a[i], b[i], *([a[i + 1], b[i + 1]] if i + 1 < len(a) else [])] for i in range(0, len(a), 2)]
            write_grid(out / "report.png", rows)
    return rep


def warm_start(st: EncoderState, src: str | os.PathLike[str]) -> None:
    """Load E and the fine-tuned D of encoder run/checkpoint `src` into `st` (optimisers stay fresh)."""
    ck = read_checkpoint(src)
    if ck.meta.get("kind") != "encoder":
        msg = f"--init-from must be an encoder run or checkpoint, {ck.path} is a {ck.meta.get('kind')!r} checkpoint"
        raise DataError(msg)
    try:
        st.E.load_state_dict(ck.state_dict("E"))
        st.D.load_state_dict(ck.state_dict("D"))
    except RuntimeError as e:  # shape mismatch: an encoder of another generator
        first = str(e).strip().splitlines()[0]
        msg = f"--init-from {ck.path} does not fit this generator's encoder/discriminator: {first}"
        raise DataError(msg) from None


def _check_cfg(cfg: TrainEncoderConfig) -> None:
    if cfg.batch < 2 or cfg.steps < 1 or not 0 <= cfg.holdout < 1:
        msg = f"need batch >= 2, steps >= 1 and 0 <= holdout < 1; got {cfg.batch}, {cfg.steps}, {cfg.holdout}"
        raise ConfigError(msg)


def train_encoder(cfg: TrainEncoderConfig, out: str | os.PathLike[str], *, resume: bool = False,
                  device: str | None = None, progress: bool = True) -> EncoderResult:
    """Train (or resume) the domain-guided encoder of the GAN run `cfg.gan` on `cfg.data`.

    Run folder: config.json, checkpoint.safetensors (E, fine-tuned D, optimisers, RNG), log.jsonl,
    samples/NNNNNN.png (held-out reconstructions), report.json + report.png.
    """
    _check_cfg(cfg)
    out = Path(out)
    if resume:
        ck = read_checkpoint(out / CKPT_NAME)
        cfg = from_dict(TrainEncoderConfig, {**ck.configs["train_encoder"], "steps": cfg.steps})
    gan_ck, gan_meta = _gan_meta(cfg.gan)
    info = dist.init_distributed(device)
    prepare_run_dir(out, resume)
    G = load_generator(gan_ck.path, device=info.device)
    D0 = load_discriminator(gan_ck.path, device=info.device)
    fz = Frozen(G=G, F=VGG16Features.from_safetensors(cfg.vgg).to(info.device) if cfg.vgg else D0)
    res = G.cfg.res
    data, held = load_training_set(cfg.data, res, type_names=gan_meta["defect_types"], holdout=cfg.holdout,
                                   seed=cfg.seed)
    data = TrainData(*(t.to(info.device) for t in (data.images, data.masks, data.types)), data.type_names,
                     data.paths)
    held = TrainData(*(t.to(info.device) for t in (held.images, held.masks, held.types)), held.type_names,
                     held.paths)
    st = build_state(cfg, gan_meta, G, D0, info.device)
    if resume:
        st.E.load_state_dict(ck.state_dict("E"))
        st.D.load_state_dict(ck.state_dict("D"))
        load_optimizer(st.opt_E, ck, "opt_E")
        load_optimizer(st.opt_D, ck, "opt_D")
        st.step = ck.step
        restore_rng(ck)
    else:
        if cfg.init_from:
            warm_start(st, cfg.init_from)
        write_config(out, info, {**gan_meta["configs"], "encoder": to_dict(st.e_cfg), "train_encoder": to_dict(cfg),
                                 "defect_types": st.types, "gan": gan_meta["gan"], "world_size": info.world_size,
                                 "held_out": held.paths})
    st.extra = {"split": {"held_out": held.paths}}
    for m in (st.E, st.D):
        dist.broadcast_module(m, info)
    gan_train = gan_meta["configs"].get("train_gan", {})
    policy, mask_ste = gan_train.get("augment", ""), bool(gan_train.get("mask_ste", False))
    sampler = Sampler(data.types.cpu(), good_share=cfg.good_share, seed=cfg.seed, batch=cfg.batch,
                      rank=info.rank, world_size=info.world_size)
    log = RunLogger(out, info, total=cfg.steps, start=st.step, every=cfg.log_every, progress=progress,
                    desc="encoder")
    history = []
    while st.step < cfg.steps:
        stats = encoder_step(st, fz, data, sampler, info, policy, mask_ste)
        history.append(stats)
        log.step(st.step, stats, cfg.batch * info.world_size)
        if info.is_main and len(held) and (st.step % cfg.sample_every == 0 or st.step == cfg.steps):
            with torch.no_grad():
                sel = held.subset(list(range(min(len(held), 8))))
                rec, logit = G.synthesis(st.E(sel.images, sel.masks), noise_mode="const")
            write_grid(out / "samples" / f"{st.step:06d}.png",
                       [pair_cells(sel.images, sel.masks), pair_cells(rec, (logit > 0).float())])
        if info.is_main and (st.step % cfg.ckpt_every == 0 or st.step == cfg.steps):
            st.save(out)
    wall = log.close()
    rep = _encoder_report(st, G, held, out, wall) if info.is_main else None
    dist.barrier(info)
    return EncoderResult(out=out, step=st.step, history=history, state=st, report=rep)


def train_encoder_cli(*, data: Path, gan: Path, out: Path, steps: int, batch: int, vgg: Path | None,
                      resume: bool, seed: int, dry_run: bool = False, **options: Any) -> None:
    """Entry of `defectgen train encoder`: extra keyword options are TrainEncoderConfig fields (None = default)."""
    cfg = TrainEncoderConfig(data=str(data), gan=str(gan), steps=steps, batch=batch, seed=seed,
                             vgg=str(vgg) if vgg else None, **{k: v for k, v in options.items() if v is not None})
    if dry_run:
        _check_cfg(cfg)
        ck, meta = _gan_meta(cfg.gan)
        e_cfg = EncoderConfig.from_generator(from_dict(GeneratorConfig, ck.configs["generator"]))
        print(json.dumps({**meta["configs"], "encoder": to_dict(e_cfg), "train_encoder": to_dict(cfg),
                          "defect_types": meta["defect_types"], "gan": meta["gan"]}, indent=2))
        return
    result = train_encoder(cfg, out, resume=resume)
    dist.shutdown(dist.init_distributed())  # already joined by train_encoder: this only leaves the group
    held = (result.report or {}).get("held_out", {})
    if result.report is not None:
        print(f"trained {result.step} steps -> {out / CKPT_NAME}; held-out PSNR {held.get('psnr_db')} dB, "
              f"mask IoU {held.get('mask_iou')} (report: {out / 'report.json'})")
