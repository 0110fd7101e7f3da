"""`defectgen train gan`: the conditional image+mask StyleGAN2-lite trainer.

One run folder holds `config.json` (resolved configs), `checkpoint.safetensors` (see checkpoint.py),
`log.jsonl`, `samples/NNNNNN.png` (fixed z, one row per type, image | mask per cell), and at the end
`report.json` + `report.png`. Works as one process or under `torchrun` (see dist.py); resume is exact because
the data order, z, noise and augmentation of step k depend only on (seed, k, rank).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from defectgen.nets.stylegan import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig, count_params
from defectgen.training import dist
from defectgen.training.augment import parse_policy
from defectgen.training.checkpoint import CKPT_NAME, Checkpoint, load_optimizer, read_checkpoint, restore_rng
from defectgen.training.checkpoint import save_checkpoint as _save
from defectgen.training.common import (
    RunLogger,
    ema_update,
    prepare_run_dir,
    set_trainable,
    step_seed,
    write_config,
)
from defectgen.training.config import ConfigError, TrainGanConfig, from_dict, to_dict
from defectgen.training.dataset import Sampler, TrainData, load_training_set, open_category
from defectgen.training.losses import GanLoss, onehot
from defectgen.training.report import pair_cells, write_grid, write_json
from defectgen.training.segmenter import Segmenter, fit_segmenter

SUPPORTED_RES = (16, 32, 64, 128, 256)  # 16/32 for tests; the CLI documents 64/128/256


@dataclass
class GanState:
    """Everything a GAN step touches; `step` counts completed steps."""

    G: Generator
    G_ema: Generator
    D: Discriminator
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    cfg: TrainGanConfig
    g_cfg: GeneratorConfig
    d_cfg: DiscriminatorConfig
    types: list[str]
    step: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    S: Segmenter | None = None  # defect segmenter labelling G's masks (cfg.mask_seg > 0), fitted once, frozen

    def configs(self) -> dict[str, dict[str, Any]]:
        return {"generator": to_dict(self.g_cfg), "discriminator": to_dict(self.d_cfg),
                "train_gan": to_dict(self.cfg)}

    def save(self, out: Path) -> Path:
        return _save(out / CKPT_NAME, kind="gan", step=self.step,
                     modules={"G": self.G, "G_ema": self.G_ema, "D": self.D,
                              **({"S": self.S} if self.S is not None else {})},
                     optimizers={"opt_G": self.opt_G, "opt_D": self.opt_D},
                     configs=self.configs(), extra={"defect_types": self.types, **self.extra})


@dataclass
class GanResult:
    out: Path
    step: int
    history: list[dict[str, float]]  # per-step losses of this call (rank-averaged)
    state: GanState


def default_model_configs(res: int, n_types: int) -> tuple[GeneratorConfig, DiscriminatorConfig]:
    """The nets' defaults at `res` for `n_types` types (channels sized for CPU at 64 px)."""
    levels = tuple(k for k in DiscriminatorConfig.feature_levels if res // k >= 4) or (res // 4,)
    return GeneratorConfig(res=res, n_types=n_types), DiscriminatorConfig(res=res, n_types=n_types,
                                                                          feature_levels=levels)


def tiny_model_configs(res: int = 16, n_types: int = 5) -> tuple[GeneratorConfig, DiscriminatorConfig]:
    """Toy-sized nets (8-16 channels, 16-dim latents) for tests and smoke runs: a step takes milliseconds."""
    levels = tuple(k for k in (2, 4, 8) if res // k >= 4)[:2]
    return (GeneratorConfig(res=res, z_dim=16, w_dim=16, n_types=n_types, mapping_layers=2, channel_base=128,
                            channel_max=16),
            DiscriminatorConfig(res=res, n_types=n_types, channel_base=128, channel_max=16, feature_levels=levels))


def _adam(params: Any, lr: float, betas: tuple[float, float], interval: int | None) -> torch.optim.Adam:
    if interval:  # lazy regularisation: compensate lr and betas for the extra R1 steps (StyleGAN2 appendix)
        ratio = interval / (interval + 1)
        lr, betas = lr * ratio, (betas[0] ** ratio, betas[1] ** ratio)
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=1e-8)


def build_state(cfg: TrainGanConfig, g_cfg: GeneratorConfig, d_cfg: DiscriminatorConfig, types: list[str],
                device: str) -> GanState:
    """Fresh nets + optimisers; weights depend only on `cfg.seed` (identical on every rank)."""
    torch.manual_seed(cfg.seed)
    G = Generator(g_cfg).to(device)
    D = Discriminator(d_cfg).to(device)
    G_ema = Generator(g_cfg).to(device).eval()
    G_ema.load_state_dict(G.state_dict())
    set_trainable(G_ema, False)
    return GanState(G=G, G_ema=G_ema, D=D, opt_G=_adam(G.parameters(), cfg.lr_g, cfg.betas, None),
                    opt_D=_adam(D.parameters(), cfg.lr_d, cfg.betas, cfg.r1_interval),
                    cfg=cfg, g_cfg=g_cfg, d_cfg=d_cfg, types=types)


def restore_state(ck: Checkpoint, cfg: TrainGanConfig, device: str) -> GanState:
    """Rebuild a `GanState` from a checkpoint (`cfg` = the saved config, possibly with a new kimg)."""
    g_cfg = from_dict(GeneratorConfig, ck.configs["generator"])
    d_cfg = from_dict(DiscriminatorConfig, ck.configs["discriminator"])
    st = build_state(cfg, g_cfg, d_cfg, list(ck.meta["defect_types"]), device)
    for name in ("G", "G_ema", "D"):
        getattr(st, name).load_state_dict(ck.state_dict(name))
    load_optimizer(st.opt_G, ck, "opt_G")
    load_optimizer(st.opt_D, ck, "opt_D")
    st.step = ck.step
    st.extra = {k: ck.meta[k] for k in ("split", "segmenter") if k in ck.meta}
    if ck.has("S"):
        st.S = Segmenter(cfg.seg_width).to(device).eval().requires_grad_(False)
        st.S.load_state_dict(ck.state_dict("S"))
    return st


@torch.no_grad()
def sample_grid(G: Generator, types: list[str], per_type: int, seed: int, device: str) -> list[list[Any]]:
    """Rows of (image | mask > 0.5) cells, one row per type, from fixed z (the same z for every type)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(per_type, G.cfg.z_dim, generator=gen).to(device)
    rows = []
    for t in range(len(types)):
        img, logit = G(z, onehot(torch.full((per_type,), t, dtype=torch.int64, device=device), len(types)))
        rows.append(pair_cells(img, (logit > 0).float()))
    return rows


def gan_step(st: GanState, loss: GanLoss, data: TrainData, sampler: Sampler, info: dist.DistInfo) -> dict:
    """One G step + one D step (+ lazy R1) + EMA, on this rank's slice of the global batch."""
    cfg, step = st.cfg, st.step
    torch.manual_seed(step_seed(cfg.seed, step, info.rank))
    idx = torch.as_tensor(sampler.indices(step), device=data.images.device)
    real_img, real_mask, real_t = data.images[idx], data.masks[idx], data.types[idx]
    # fake types follow the real batch: G learns every type at the sampler's (defect-oversampled) mix
    z_g = torch.randn(cfg.batch, st.g_cfg.z_dim, device=real_img.device)
    z_d = torch.randn(cfg.batch, st.g_cfg.z_dim, device=real_img.device)

    set_trainable(st.G, True)
    set_trainable(st.D, False)
    st.opt_G.zero_grad(set_to_none=True)
    stats, w = loss.accumulate_g(z_g, real_t)
    dist.sync_grads(st.G.parameters(), info)
    st.opt_G.step()
    st.G.mapping.update_w_avg(w, onehot(real_t, len(st.types)))
    dist.sync_buffers(st.G.mapping, info)

    set_trainable(st.G, False)
    set_trainable(st.D, True)
    st.opt_D.zero_grad(set_to_none=True)
    do_r1 = cfg.r1_interval > 0 and cfg.r1_gamma > 0 and step % cfg.r1_interval == 0
    stats |= loss.accumulate_d(z_d, real_t, real_img, real_mask, real_t, do_r1)
    dist.sync_grads(st.D.parameters(), info)
    st.opt_D.step()

    # EMA half-life in images, ramped up so the early G_ema is not dominated by the random init
    nimg = (step + 1) * cfg.batch * info.world_size
    half = min(cfg.ema_kimg * 1000, nimg * cfg.ema_rampup) if cfg.ema_rampup > 0 else cfg.ema_kimg * 1000
    ema_update(st.G_ema, st.G, 0.5 ** (cfg.batch * info.world_size / max(half, 1e-8)))
    st.step += 1
    return dist.mean_over_ranks(stats, info)


def _check_cfg(cfg: TrainGanConfig) -> None:
    if cfg.res not in SUPPORTED_RES:
        msg = f"--res must be one of 64, 128, 256 (16/32 for tests), got {cfg.res}"
        raise ConfigError(msg)
    if not 0 < cfg.defect_fraction <= 1 or not 0 <= cfg.good_share <= 1 or cfg.batch < 1:
        msg = (f"need 0 < defect_fraction <= 1, 0 <= good_share <= 1, batch >= 1; got {cfg.defect_fraction}, "
               f"{cfg.good_share}, {cfg.batch}")
        raise ConfigError(msg)
    parse_policy(cfg.augment)


def _gan_report(st: GanState, data: TrainData, held: TrainData, out: Path, wall_s: float, world: int,
                device: str) -> dict[str, Any]:
    """Write report.json + report.png: run summary and per-type mask coverage of G_ema samples vs real data.

    The coverage is a sanity check: 'good' samples should draw ~no mask, defect types about as much as their
    real masks.
    """
    gen = torch.Generator().manual_seed(st.cfg.seed + 1)
    per_type = {}
    with torch.no_grad():
        for t, name in enumerate(st.types):
            z = torch.randn(64, st.g_cfg.z_dim, generator=gen).to(device)
            _, logit = st.G_ema(z, onehot(torch.full((64,), t, device=device, dtype=torch.int64), len(st.types)))
            real = data.masks[data.types == t]
            per_type[name] = {"n_train": int(real.shape[0]),
                              "sample_mask_coverage": round(float((logit > 0).float().mean()), 5),
                              "real_mask_coverage": round(float(real.mean()), 5) if real.numel() else None}
    rep = {"kind": "gan", "step": st.step, "kimg": round(st.step * st.cfg.batch * world / 1000, 3),
           "wall_s_this_call": round(wall_s, 1), "world_size": world, "defect_types": st.types,
           "params": {"G": count_params(st.G), "D": count_params(st.D)}, "per_type": per_type,
           "segmenter": st.extra.get("segmenter"), "held_out": held.paths,
           "grid": "report.png (rows = types, cells = image | mask > 0.5, fixed z)"}
    write_json(out / "report.json", rep)
    write_grid(out / "report.png", sample_grid(st.G_ema, st.types, st.cfg.grid_per_type, st.cfg.seed, device))
    return rep


def train_gan(cfg: TrainGanConfig, out: str | os.PathLike[str], *, g_cfg: GeneratorConfig | None = None,
              d_cfg: DiscriminatorConfig | None = None, resume: bool = False, dry_run: bool = False,
              device: str | None = None, progress: bool = True) -> GanResult | dict[str, Any]:
    """Train (or resume) the conditional image+mask GAN; see the module docstring for the run folder.

    Args:
        cfg: Training options (`cfg.data` is the MVTec-layout folder).
        out: Run folder.
        g_cfg, d_cfg: Model shapes; default `default_model_configs(cfg.res, n_types)`. `n_types` is forced to
            1 + the dataset's defect types.
        resume: Continue from `out/checkpoint.safetensors`; its configs win, except `kimg` (a resume may extend).
        dry_run: Resolve and return the configs without training or writing anything.
        device: Torch device; default cuda:<local_rank> when available, else cpu.
        progress: Show the tqdm bar (rank 0).

    Returns:
        `GanResult`, or the resolved config dict when `dry_run`.
    """
    _check_cfg(cfg)
    out = Path(out)
    if resume:
        ck = read_checkpoint(out / CKPT_NAME)
        cfg = from_dict(TrainGanConfig, {**ck.configs["train_gan"], "kimg": cfg.kimg})
    types = ["good", *open_category(cfg.data).defect_types] if not resume else list(ck.meta["defect_types"])
    if g_cfg is None or d_cfg is None:
        g_def, d_def = default_model_configs(cfg.res, len(types))
        g_cfg, d_cfg = g_cfg or g_def, d_cfg or d_def
    try:
        g_cfg = from_dict(GeneratorConfig, {**to_dict(g_cfg), "res": cfg.res, "n_types": len(types)})
        d_cfg = from_dict(DiscriminatorConfig, {**to_dict(d_cfg), "res": cfg.res, "n_types": len(types)})
    except ValueError as e:  # the nets validate their own shapes; a bad width is the user's option
        raise ConfigError(str(e)) from None
    resolved = {"generator": to_dict(g_cfg), "discriminator": to_dict(d_cfg), "train_gan": to_dict(cfg),
                "defect_types": types}
    if dry_run:
        return resolved

    info = dist.init_distributed(device)
    prepare_run_dir(out, resume)
    data, held = load_training_set(cfg.data, cfg.res, type_names=types, defect_fraction=cfg.defect_fraction,
                                   seed=cfg.seed)
    data = TrainData(data.images.to(info.device), data.masks.to(info.device), data.types.to(info.device),
                     data.type_names, data.paths)
    if resume:
        st = restore_state(ck, cfg, info.device)
        restore_rng(ck)
    else:
        st = build_state(cfg, g_cfg, d_cfg, types, info.device)
        st.extra = {"split": {"held_out": held.paths}}
        write_config(out, info, {**resolved, "world_size": info.world_size, "held_out": held.paths})
    if cfg.mask_seg > 0 and st.S is None:  # every rank fits the same S (same seed and data)
        st.S, fit = fit_segmenter(data.images, data.masks, data.types, steps=cfg.seg_steps, batch=cfg.batch,
                                  seed=cfg.seed, width=cfg.seg_width)
        st.extra["segmenter"] = asdict(fit)
    for m in (st.G, st.G_ema, st.D, *([st.S] if st.S else [])):
        dist.broadcast_module(m, info)
    sampler = Sampler(data.types.cpu(), good_share=cfg.good_share, seed=cfg.seed, batch=cfg.batch,
                      rank=info.rank, world_size=info.world_size)
    coverage = torch.stack([data.masks[data.types == t].mean() if (data.types == t).any()
                            else torch.zeros((), device=info.device) for t in range(len(types))])
    loss = GanLoss(st.G, st.D, policy=cfg.augment, r1_gamma=cfg.r1_gamma, r1_interval=cfg.r1_interval,
                   mask_stat=cfg.mask_stat, real_coverage=coverage, mask_ste=cfg.mask_ste,
                   segmenter=st.S if cfg.mask_seg > 0 else None, mask_seg=cfg.mask_seg)
    total = cfg.total_steps(info.world_size)
    log = RunLogger(out, info, total=total, start=st.step, every=cfg.log_every, progress=progress, desc="gan")
    history = []
    while st.step < total:
        stats = gan_step(st, loss, data, sampler, info)
        history.append(stats)
        log.step(st.step, stats, cfg.batch * info.world_size)
        if info.is_main and (st.step % cfg.sample_every == 0 or st.step == total):
            write_grid(out / "samples" / f"{st.step:06d}.png",
                       sample_grid(st.G_ema, types, cfg.grid_per_type, cfg.seed, info.device))
        if info.is_main and (st.step % cfg.ckpt_every == 0 or st.step == total):
            st.save(out)
    wall = log.close()
    if info.is_main:
        _gan_report(st, data, held, out, wall, info.world_size, info.device)
    dist.barrier(info)
    return GanResult(out=out, step=st.step, history=history, state=st)


def train_gan_cli(*, data: Path, out: Path, res: int, kimg: float, batch: int, resume: bool, seed: int,
                  dry_run: bool, channel_max: int | None = None, channel_base: int | None = None,
                  **options: Any) -> None:
    """Entry of `defectgen train gan`: extra keyword options are TrainGanConfig fields (None = default)."""
    cfg = TrainGanConfig(data=str(data), res=res, kimg=kimg, batch=batch, seed=seed,
                         **{k: v for k, v in options.items() if v is not None})
    g_cfg = d_cfg = None
    if channel_max is not None or channel_base is not None:
        widths = {k: v for k, v in (("channel_max", channel_max), ("channel_base", channel_base)) if v is not None}
        g_def, d_def = default_model_configs(res, 1)  # n_types is set from the data in train_gan
        g_cfg = from_dict(GeneratorConfig, {**to_dict(g_def), **widths})
        d_cfg = from_dict(DiscriminatorConfig, {**to_dict(d_def), **widths})
    result = train_gan(cfg, out, g_cfg=g_cfg, d_cfg=d_cfg, resume=resume, dry_run=dry_run)
    if dry_run:
        print(json.dumps(result, indent=2))
        return
    info = dist.init_distributed()  # already joined by train_gan: this only reads the rank
    if info.is_main:
        print(f"trained {result.step} steps -> {out / CKPT_NAME} (report: {out / 'report.json'})")
    dist.shutdown(info)
