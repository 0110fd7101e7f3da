"""`defectgen train patch-encoder`: the encoder E(window, mask) -> w+ that starts a patch G's inversion.

From the type's mean w a layered patch G needs ~100 Adam steps before its mask follows an unseen target; the
edge runs 5-10. E is the project's idinvert `Encoder` at side P with the patch G's w+ layout, starting at G's
w_avg (averaged over types: E sees no type), trained against the frozen G_ema of a `train patch` run:

    w_latent · mean((E(x, m) − w+)²)                   G samples, whose w+ is known (G samples only)
    w_pix    · mean((comp(G(E(x, m), good)) − x)²)      soft composite over the good window under x
    w_mask   · BCE(G_mask(E(x, m), good), m)             the start must put the defect where the target is
    w_feat   · mean((D.features(comp, m) − D.features(x, m))²)   the patch D's trunk (off by default)

Each batch is half G samples (random z and type on random train/good windows, hard mask) and half real windows
of the defective images the patch GAN saw (its held-in list), over their inpainted good windows (see
patch_encoder_data.py). The report scores held-out G samples and held-out real windows against the w_avg start
(patch_encoder_report.py).

Run folder: `config.json`, `checkpoint.safetensors` (kind "patch_encoder"; `E` loads with
`checkpoint.load_encoder`), `log.jsonl`, `samples/NNNNNN.png` (held-out real windows: input | G(E)),
`report.json` + `report.png`. Resume is exact: step k's batch depends only on (seed, k).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from defectgen.errors import DataError
from defectgen.nets.encoder import Encoder, EncoderConfig
from defectgen.nets.patch import PatchDiscriminator, PatchDiscriminatorConfig, PatchGenerator
from defectgen.training.checkpoint import CKPT_NAME, Checkpoint, load_optimizer, read_checkpoint, restore_rng
from defectgen.training.checkpoint import save_checkpoint as _save
from defectgen.training.common import RunLogger, prepare_run_dir, run_budgeted, step_seed
from defectgen.training.config import ConfigError, TrainPatchEncoderConfig, from_dict, to_dict
from defectgen.training.dist import DistInfo
from defectgen.training.patch_data import load_patch_data
from defectgen.training.patch_encoder_data import (
    Windows,
    eval_good_windows,
    g_samples,
    held_out_g_samples,
    held_out_names,
    inpaint_goods,
    real_windows,
)
from defectgen.training.patch_encoder_report import encoder_start, evaluate, example_rows, plot_report
from defectgen.training.patch_gan import load_patch_generator
from defectgen.training.report import pair_cells, write_grid, write_json

KIND = "patch_encoder"


@dataclass
class PatchRun:
    """The frozen patch run E trains against: G_ema, D (features), its configs and data options."""

    G: PatchGenerator
    D: PatchDiscriminator
    configs: dict[str, dict[str, Any]]
    types: list[str]
    held_in: dict[str, list[str]]
    path: str
    step: int

    @property
    def window(self) -> int:
        return self.G.cfg.window

    @property
    def scale(self) -> float:
        return float(self.configs["train_patch"]["scale"])


def load_patch_run(path: str | os.PathLike[str]) -> PatchRun:
    ck = read_checkpoint(path)
    if ck.meta.get("kind") != "patch":
        msg = f"--patch must be a `train patch` run or checkpoint, {ck.path} is a {ck.meta.get('kind')!r} checkpoint"
        raise DataError(msg)
    D = PatchDiscriminator(from_dict(PatchDiscriminatorConfig, ck.configs["patch_discriminator"]))
    D.load_state_dict(ck.state_dict("D"))
    return PatchRun(G=load_patch_generator(ck.path), D=D.eval().requires_grad_(False),
                    configs={k: ck.configs[k] for k in ("patch_generator", "patch_discriminator", "train_patch")},
                    types=list(ck.meta["defect_types"]), held_in=dict(ck.meta["held_in"]), path=str(ck.path),
                    step=ck.step)


def encoder_config(G: PatchGenerator, cfg: TrainPatchEncoderConfig) -> EncoderConfig:
    """The project's encoder at side P with G's w+ layout."""
    return EncoderConfig(res=G.cfg.window, w_dim=G.cfg.w_dim, num_ws=G.num_ws, channel_base=cfg.channel_base,
                         channel_max=cfg.channel_max)


@dataclass
class PatchEncoderState:
    E: Encoder
    opt: torch.optim.Optimizer
    cfg: TrainPatchEncoderConfig
    e_cfg: EncoderConfig
    run: PatchRun
    step: int = 0

    def configs(self) -> dict[str, dict[str, Any]]:
        return {**self.run.configs, "encoder": to_dict(self.e_cfg), "train_patch_encoder": to_dict(self.cfg)}

    def meta(self) -> dict[str, Any]:
        r = self.run
        return {"defect_types": r.types, "held_in": r.held_in, "patch": {"path": r.path, "step": r.step},
                "window": r.window, "scale": r.scale}

    def save(self, out: Path) -> Path:
        return _save(out / CKPT_NAME, kind=KIND, step=self.step, modules={"E": self.E}, optimizers={"opt_E": self.opt},
                     configs=self.configs(), extra=self.meta())


@dataclass
class TrainWindows:
    """What a step draws from: real held-in windows (with inpainted goods) and train/good windows."""

    real: Windows
    goods: torch.Tensor


@dataclass
class PatchEncoderResult:
    out: Path
    step: int
    history: list[dict[str, float]]
    state: PatchEncoderState
    report: dict[str, Any]


def build_state(cfg: TrainPatchEncoderConfig, run: PatchRun) -> PatchEncoderState:
    """Fresh E (weights from `cfg.seed`) at G's w_avg, and its Adam."""
    torch.manual_seed(cfg.seed)
    e_cfg = encoder_config(run.G, cfg)
    E = Encoder(e_cfg)
    E.set_w_avg(run.G.w_avg)  # [T, W] -> mean over types: E sees no type
    return PatchEncoderState(E=E, opt=torch.optim.Adam(E.parameters(), lr=cfg.lr, betas=cfg.betas), cfg=cfg,
                             e_cfg=e_cfg, run=run)


def load_train_windows(cfg: TrainPatchEncoderConfig, run: PatchRun) -> TrainWindows:
    """The held-in defect windows (the patch run's images, checked by name) and train/good windows."""
    tp = run.configs["train_patch"]
    data = load_patch_data(cfg.data, window=run.window, scale=run.scale, held_in=tp["held_in"],
                           per_defect=cfg.per_defect, per_good=cfg.per_good, seed=cfg.seed)
    if data.type_names != run.types or data.held_in != run.held_in:
        msg = (f"--data {cfg.data} does not give the patch run's types and held-in images ({data.type_names} vs "
               f"{run.types}); pass the folder the patch run trained on")
        raise DataError(msg)
    real = Windows(data.defects, data.masks, inpaint_goods(data.defects, data.masks), data.types)
    return TrainWindows(real=real, goods=data.goods)


# --------------------------------------------------------------------------------------------- one step


def losses(st: PatchEncoderState, x: Windows, wp: torch.Tensor) -> dict[str, torch.Tensor]:
    """Loss terms of E on windows `x`; the first `len(wp)` rows are G samples with known w+ `wp`."""
    cfg, G = st.cfg, st.run.G
    w_hat = encoder_start(st.E, G, x, cfg.type_start)  # [B, L, W]
    colour, logit = G.synthesis(w_hat, x.goods, noise_mode="const")
    rec, alpha = G.compose(x.goods, colour, logit)  # soft alpha: the inversion objective's composite
    terms = {"pix": (rec - x.images).square().mean(),
             "mask": F.binary_cross_entropy_with_logits(logit, x.masks),
             "latent": (w_hat[:len(wp)] - wp).square().mean() if len(wp) else torch.zeros(())}
    if cfg.w_dice > 0:
        inter, sums = (alpha * x.masks).flatten(1).sum(1), (alpha + x.masks).flatten(1).sum(1)
        terms["dice"] = (1 - (2 * inter + 1) / (sums + 1)).mean()
    if cfg.w_feat > 0:
        D = st.run.D
        terms["feat"] = (D.features(rec, x.masks) - D.features(x.images, x.masks)).square().mean()
    return terms


def total(cfg: TrainPatchEncoderConfig, terms: dict[str, torch.Tensor]) -> torch.Tensor:
    weights = {"pix": cfg.w_pix, "mask": cfg.w_mask, "dice": cfg.w_dice, "latent": cfg.w_latent, "feat": cfg.w_feat}
    return sum((weights[k] * v for k, v in terms.items()), torch.zeros(()))


def draw_batch(st: PatchEncoderState, data: TrainWindows) -> tuple[Windows, torch.Tensor]:
    """Half G samples (random z, type, train/good window), half real held-in windows; RNG: the global torch one."""
    G, n_g = st.run.G, st.cfg.batch // 2
    types = torch.randint(len(st.run.types), (n_g,))
    goods = data.goods[torch.randint(len(data.goods), (n_g,))]
    fake, wp = g_samples(G, goods, types, torch.randn(n_g, G.cfg.z_dim))
    real = data.real.subset(torch.randint(len(data.real), (st.cfg.batch - n_g,)))
    both = Windows(*(torch.cat([getattr(fake, f), getattr(real, f)]) for f in ("images", "masks", "goods", "types")))
    return both, wp


def encoder_step(st: PatchEncoderState, data: TrainWindows) -> dict[str, float]:
    torch.manual_seed(step_seed(st.cfg.seed, st.step, 0))
    x, wp = draw_batch(st, data)
    st.opt.zero_grad(set_to_none=True)
    terms = losses(st, x, wp)
    loss = total(st.cfg, terms)
    loss.backward()
    st.opt.step()
    st.step += 1
    return {"loss_E": loss.item(), **{k: v.item() for k, v in terms.items()}}


# --------------------------------------------------------------------------------------------- report


def held_out_sets(cfg: TrainPatchEncoderConfig, run: PatchRun) -> dict[str, tuple[Windows, torch.Tensor | None]]:
    """The report's sets: held-out G samples on test/good windows (known w+) and held-out real windows."""
    goods = eval_good_windows(cfg.data, window=run.window, scale=run.scale, per_image=4, seed=cfg.seed + 1)
    g_win, g_wp = held_out_g_samples(run.G, goods, cfg.eval_samples, cfg.seed + 1)
    names = held_out_names(cfg.data, run.held_in)
    real = real_windows(cfg.data, names, run.types, window=run.window, scale=run.scale,
                        per_image=cfg.eval_per_defect, seed=cfg.seed + 1)
    return {"g_samples": (g_win, g_wp), "real": (real, None)}


def write_report(st: PatchEncoderState, sets: dict[str, tuple[Windows, torch.Tensor | None]], out: Path,
                 wall_s: float) -> dict[str, Any]:
    names = held_out_names(st.cfg.data, st.run.held_in)
    rep = {"kind": KIND, "step": st.step, "wall_s_this_call": round(wall_s, 1), "threads": torch.get_num_threads(),
           "patch": {"path": st.run.path, "step": st.run.step}, "defect_types": st.run.types,
           "held_out": evaluate(st.E, st.run.G, sets, st.run.types, st.cfg.type_start), "held_out_images": names,
           "notes": "starts: encoder = E(x, m); w_avg = the type's mean w (no encoder). g_samples: fresh z on "
                    "test/good windows, masks >= 2 px; real: windows of defective images the patch GAN did not "
                    "see, good window = the window inpainted. mask_iou: G's mask (logit > 0) vs the target; psnr "
                    "of the smooth composite on [0,1]; psnr_mask_db inside the target mask only; no Adam steps "
                    "after the start.",
           "figure": "report.png"}
    write_json(out / "report.json", rep)
    grids = {k: example_rows(st.E, st.run.G, w, 12, st.cfg.type_start) for k, (w, _) in sets.items() if len(w)}
    plot_report(rep, grids, out / "report.png")
    return rep


@torch.no_grad()
def write_samples(st: PatchEncoderState, win: Windows, path: Path) -> None:
    sel = win.subset(torch.linspace(0, len(win) - 1, min(8, len(win))).long())
    colour, logit = st.run.G.synthesis(encoder_start(st.E, st.run.G, sel, st.cfg.type_start), sel.goods,
                                       noise_mode="const")
    write_grid(path, [pair_cells(sel.images, sel.masks),
                      pair_cells(st.run.G.compose(sel.goods, colour, logit)[0], (logit > 0).float())])


# --------------------------------------------------------------------------------------------- entry


def _check_cfg(cfg: TrainPatchEncoderConfig) -> None:
    if cfg.batch < 2 or cfg.steps < 1 or (cfg.minutes is not None and cfg.minutes <= 0):
        msg = f"need --batch >= 2, --steps >= 1, --minutes > 0; got {cfg.batch}, {cfg.steps}, {cfg.minutes}"
        raise ConfigError(msg)
    if cfg.per_defect < 1 or cfg.eval_per_defect < 0 or cfg.eval_samples < 0:
        msg = f"need per_defect >= 1, eval_per_defect >= 0, eval_samples >= 0; got {cfg}"
        raise ConfigError(msg)


def _resolve(cfg: TrainPatchEncoderConfig, out: Path, resume: bool) -> tuple[TrainPatchEncoderConfig,
                                                                               Checkpoint | None]:
    ck = None
    if resume:
        ck = read_checkpoint(out / CKPT_NAME)
        if ck.meta.get("kind") != KIND:
            msg = f"{ck.path} is a {ck.meta.get('kind')!r} checkpoint, not a patch-encoder run"
            raise ConfigError(msg)
        cfg = from_dict(TrainPatchEncoderConfig, {**ck.configs["train_patch_encoder"], "steps": cfg.steps,
                                                  "minutes": cfg.minutes})
    _check_cfg(cfg)
    return cfg, ck


def train_patch_encoder(cfg: TrainPatchEncoderConfig, out: str | os.PathLike[str], *, resume: bool = False,
                        progress: bool = True) -> PatchEncoderResult:
    """Train (or resume) E for the patch run `cfg.patch` on `cfg.data`; see the module docstring.

    Args:
        cfg: Training options.
        out: Run folder.
        resume: Continue from `out/checkpoint.safetensors`; its options win except `steps` and `minutes`.
        progress: Show the tqdm bar.
    """
    out = Path(out)
    cfg, ck = _resolve(cfg, out, resume)
    run = load_patch_run(cfg.patch)
    if ck is not None and ck.meta["patch"]["step"] != run.step:
        msg = (f"--resume: {cfg.patch} is at step {run.step}, this encoder trained against step "
               f"{ck.meta['patch']['step']}; train against a fixed snapshot of the patch run")
        raise DataError(msg)
    prepare_run_dir(out, resume)
    data = load_train_windows(cfg, run)
    st = build_state(cfg, run)
    if ck is not None:
        st.E.load_state_dict(ck.state_dict("E"))
        load_optimizer(st.opt, ck, "opt_E")
        st.step = ck.step
        restore_rng(ck)
    else:
        write_json(out / "config.json", {**st.configs(), **st.meta(), "n_real_windows": len(data.real),
                                         "n_good_windows": int(data.goods.shape[0])})
    sets = held_out_sets(cfg, run)
    log = RunLogger(out, DistInfo(), total=cfg.steps, start=st.step, every=cfg.log_every, progress=progress,
                    desc="patch-encoder")
    def sample() -> None:
        if len(sets["real"][0]):
            write_samples(st, sets["real"][0], out / "samples" / f"{st.step:06d}.png")

    history = run_budgeted(lambda: encoder_step(st, data), lambda: st.step, log, cfg, sample=sample,
                           save=lambda: st.save(out))
    wall = log.close()
    rep = write_report(st, sets, out, wall)
    return PatchEncoderResult(out=out, step=st.step, history=history, state=st, report=rep)


def train_patch_encoder_cli(*, data: Path, patch: Path, out: Path, resume: bool, **options: Any) -> None:
    """Entry of `defectgen train patch-encoder`: keyword options are TrainPatchEncoderConfig fields (None = default)."""
    cfg = TrainPatchEncoderConfig(data=str(data), patch=str(patch),
                                  **{k: v for k, v in options.items() if v is not None})
    result = train_patch_encoder(cfg, out, resume=resume)
    real = result.report["held_out"].get("real", {})
    iou = {k: real.get(k, {}).get("mask_iou") for k in ("encoder", "w_avg")}
    print(f"trained to step {result.step} -> {out / CKPT_NAME}; held-out real windows: mask IoU {iou['encoder']} "
          f"from E vs {iou['w_avg']} from w_avg (report: {out / 'report.json'}, {out / 'report.png'})")
