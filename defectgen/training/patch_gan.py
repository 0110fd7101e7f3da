"""`defectgen train patch`: the layered patch GAN trainer (patch mode, docs/design.md "Resolution and patch mode").

G draws a defect layer (colour + alpha) over a random *real* good window (with `design` "full" it draws the whole
window and the good one plays no part); D sees (composite, mask) against real defective windows of the held-in
images, unpaired, with the same DiffAugment on both. Non-saturating loss +
lazy R1, EMA generator, and a mode-seeking term so different latents give different defects. With
`shape_weight` > 0 a second, mask-only D (`D_shape`: the same architecture at half the channels, its image input
zeros, no colour augmentation) judges G's hard mask against the real masks: the joint D can pass a fake on its
colours alone, this one judges nothing but the shape (thickness, branching, how many pieces).

Run folder: `config.json`, `held_in.json` (the only defective files the run saw), `checkpoint.safetensors`
(kind "patch"; see checkpoint.py), `log.jsonl`, `samples/NNNNNN.png` (the learning curve: fixed z and good
windows, one row per type, cells = good window | composite | mask), `reals.png` (real windows per type), and
at the end `report.json` + `report.png` (loss curves). Resume is exact: step k's batch, z, noise and
augmentation depend only on (seed, k) on one device kind (CPU and CUDA draw different numbers; a run can move
between them on resume).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from defectgen.nets.patch import (
    PatchDiscriminator,
    PatchDiscriminatorConfig,
    PatchGenerator,
    PatchGeneratorConfig,
)
from defectgen.training.augment import augment, next_ada_p, parse_policy
from defectgen.training.checkpoint import CKPT_NAME, Checkpoint, load_optimizer, read_checkpoint, restore_rng
from defectgen.training.checkpoint import save_checkpoint as _save
from defectgen.training.colour_range import head_input_bounds, parse_types, range_loss
from defectgen.training.common import RunLogger, ema_update, prepare_run_dir, run_budgeted, set_trainable, step_seed
from defectgen.training.config import ConfigError, TrainPatchConfig, from_dict, to_dict
from defectgen.training.dist import DistInfo
from defectgen.training.losses import d_loss, onehot
from defectgen.training.patch_data import PatchData, load_patch_data
from defectgen.training.patch_report import fixed_goods, real_grid, sample_grid, write_report
from defectgen.training.report import write_grid, write_json

KIND = "patch"
MS_EPS = 1e-3  # floor of |w1 - w2| in the mode-seeking ratio (two z never map to the same w in practice)


@dataclass
class PatchState:
    """Everything a patch-GAN step touches; `step` counts completed steps."""

    G: PatchGenerator
    G_ema: PatchGenerator
    D: PatchDiscriminator
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    cfg: TrainPatchConfig
    g_cfg: PatchGeneratorConfig
    d_cfg: PatchDiscriminatorConfig
    types: list[str]
    held_in: dict[str, list[str]]
    step: int = 0
    D_shape: PatchDiscriminator | None = None  # mask-only D (`cfg.shape_weight` > 0)
    opt_D_shape: torch.optim.Optimizer | None = None
    ada_p: float = 0.0  # the adaptive augmentation's probability (`cfg.ada_target` > 0)
    colour_range: tuple[torch.Tensor, torch.Tensor] | None = None  # [T, 3] bounds at G's colour-head input

    def configs(self) -> dict[str, dict[str, Any]]:
        out = {"patch_generator": to_dict(self.g_cfg), "patch_discriminator": to_dict(self.d_cfg),
               "train_patch": to_dict(self.cfg)}
        if self.D_shape is not None:
            out["patch_shape_discriminator"] = to_dict(self.D_shape.cfg)
        return out

    def save(self, out: Path) -> Path:
        modules: dict[str, torch.nn.Module] = {"G": self.G, "G_ema": self.G_ema, "D": self.D}
        optimizers = {"opt_G": self.opt_G, "opt_D": self.opt_D}
        if self.D_shape is not None and self.opt_D_shape is not None:
            modules["D_shape"], optimizers["opt_D_shape"] = self.D_shape, self.opt_D_shape
        return _save(out / CKPT_NAME, kind=KIND, step=self.step, modules=modules, optimizers=optimizers,
                     configs=self.configs(),
                     extra={"defect_types": self.types, "held_in": self.held_in, "scale": self.cfg.scale,
                             "ada_p": self.ada_p})


@dataclass
class PatchResult:
    out: Path
    step: int
    history: list[dict[str, float]]  # per-step losses of this call
    state: PatchState


DESIGNS = ("layered", "full")
COLOUR_HEADS = ("tanh", "linear", "wide")
WIDE_COLOUR_BOUND = 1.2  # "wide": 1.2 tanh(x / 1.2), the data range on the tanh's steep part


def model_configs(window: int, n_types: int, tiny: bool = False, design: str = "layered",
                  colour_head: str = "tanh") -> tuple[PatchGeneratorConfig, PatchDiscriminatorConfig]:
    """Default nets at window `window`; `tiny` = 8-16 channels and 16-dim latents (tests, smoke runs)."""
    layered, colour_tanh = design == "layered", colour_head != "linear"
    head = {"layered": layered, "colour_tanh": colour_tanh,
            "colour_bound": WIDE_COLOUR_BOUND if colour_head == "wide" else 1.0}
    if tiny:
        return (PatchGeneratorConfig(window=window, z_dim=16, w_dim=16, n_types=n_types, mapping_layers=2,
                                     channel_base=128, channel_max=16, **head),
                PatchDiscriminatorConfig(res=window, n_types=n_types, channel_base=128, channel_max=16))
    return (PatchGeneratorConfig(window=window, n_types=n_types, **head),
            PatchDiscriminatorConfig(res=window, n_types=n_types))


def shape_d_config(d_cfg: PatchDiscriminatorConfig) -> PatchDiscriminatorConfig:
    """The mask-only D: the joint D's architecture at half its channels (a shape needs less than a texture)."""
    return replace(d_cfg, channel_base=max(d_cfg.channel_base // 2, 16), channel_max=max(d_cfg.channel_max // 2, 8))


def _adam(params: Any, lr: float, betas: tuple[float, float], interval: int | None) -> torch.optim.Adam:
    if interval:  # lazy regularisation: compensate lr and betas for the extra R1 steps (StyleGAN2 appendix)
        ratio = interval / (interval + 1)
        lr, betas = lr * ratio, (betas[0] ** ratio, betas[1] ** ratio)
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=1e-8)


def build_state(cfg: TrainPatchConfig, g_cfg: PatchGeneratorConfig, d_cfg: PatchDiscriminatorConfig,
                types: list[str], held_in: dict[str, list[str]], device: str = "cpu") -> PatchState:
    """Fresh nets + optimisers on `device`; weights depend only on `cfg.seed` (drawn on the CPU)."""
    torch.manual_seed(cfg.seed)
    G, D = PatchGenerator(g_cfg).to(device), PatchDiscriminator(d_cfg).to(device)
    G_ema = PatchGenerator(g_cfg).to(device).eval()
    G_ema.load_state_dict(G.state_dict())
    set_trainable(G_ema, False)
    st = PatchState(G=G, G_ema=G_ema, D=D, opt_G=_adam(G.parameters(), cfg.lr_g, cfg.betas, None),
                    opt_D=_adam(D.parameters(), cfg.lr_d, cfg.betas, cfg.r1_interval), cfg=cfg, g_cfg=g_cfg,
                    d_cfg=d_cfg, types=types, held_in=held_in)
    if cfg.shape_weight > 0:
        st.D_shape = PatchDiscriminator(shape_d_config(d_cfg)).to(device)
        st.opt_D_shape = _adam(st.D_shape.parameters(), cfg.lr_d, cfg.betas, cfg.r1_interval)
    return st


def restore_state(ck: Checkpoint, cfg: TrainPatchConfig, device: str = "cpu") -> PatchState:
    """Rebuild a `PatchState` on `device` from a checkpoint (`cfg` = the saved config with this call's budget)."""
    g_cfg = from_dict(PatchGeneratorConfig, ck.configs["patch_generator"])
    d_cfg = from_dict(PatchDiscriminatorConfig, ck.configs["patch_discriminator"])
    st = build_state(cfg, g_cfg, d_cfg, list(ck.meta["defect_types"]), dict(ck.meta["held_in"]), device)
    for name in ("G", "G_ema", "D"):
        getattr(st, name).load_state_dict(ck.state_dict(name))
    load_optimizer(st.opt_G, ck, "opt_G")
    load_optimizer(st.opt_D, ck, "opt_D")
    if st.D_shape is not None and ck.has("D_shape"):  # else a fresh one: fine-tuning adds it
        st.D_shape = PatchDiscriminator(from_dict(PatchDiscriminatorConfig, ck.configs["patch_shape_discriminator"]))
        st.D_shape = st.D_shape.to(device)
        st.D_shape.load_state_dict(ck.state_dict("D_shape"))
        st.opt_D_shape = _adam(st.D_shape.parameters(), cfg.lr_d, cfg.betas, cfg.r1_interval)
        load_optimizer(st.opt_D_shape, ck, "opt_D_shape")
    st.step = ck.step
    st.ada_p = float(ck.meta.get("ada_p", 0.0)) if cfg.ada_target > 0 else 0.0  # resumed with ADA off: off
    return st


def init_state(ck: Checkpoint, cfg: TrainPatchConfig, data: PatchData, device: str = "cpu") -> PatchState:
    """A run over another patch run's nets (`--init-from`, slim too): G, G_ema <- its G_ema, D <- its D, step 0.

    Raises:
        ConfigError: its nets or defect types differ from what this run's options and data ask for.
    """
    g_cfg = from_dict(PatchGeneratorConfig, ck.configs["patch_generator"])
    d_cfg = from_dict(PatchDiscriminatorConfig, ck.configs["patch_discriminator"])
    want = model_configs(cfg.window, len(data.type_names), design=cfg.design, colour_head=cfg.colour_head)[0]
    shaped = ("window", "layered", "colour_tanh", "colour_bound")
    if [getattr(g_cfg, k) for k in shaped] != [getattr(want, k) for k in shaped]:
        msg = (f"--init-from {ck.path}: its G has window {g_cfg.window}, layered {g_cfg.layered}, colour bound "
               f"{g_cfg.colour_bound if g_cfg.colour_tanh else None}; this run asks for window {cfg.window}, "
               f"design {cfg.design!r}, colour head {cfg.colour_head!r}")
        raise ConfigError(msg)
    if list(ck.meta["defect_types"]) != data.type_names:
        msg = (f"--init-from {ck.path}: its defect types {ck.meta['defect_types']} differ from {cfg.data}'s "
               f"{data.type_names}")
        raise ConfigError(msg)
    st = build_state(cfg, g_cfg, d_cfg, data.type_names, data.held_in, device)
    ema = ck.state_dict("G_ema" if ck.has("G_ema") else "G")
    st.G.load_state_dict(ema)
    st.G_ema.load_state_dict(ema)
    st.D.load_state_dict(ck.state_dict("D"))
    st.ada_p = float(ck.meta.get("ada_p", 0.0)) if cfg.ada_target > 0 else 0.0
    return st


def load_patch_generator(path: str | os.PathLike[str], *, ema: bool = True) -> PatchGenerator:
    """The (EMA) generator of a patch run folder or checkpoint, frozen, eval mode."""
    ck = read_checkpoint(path)
    G = PatchGenerator(from_dict(PatchGeneratorConfig, ck.configs["patch_generator"]))
    G.load_state_dict(ck.state_dict("G_ema" if ema and ck.has("G_ema") else "G"))
    return G.eval().requires_grad_(False)


# --------------------------------------------------------------------------------------------- one step


def mode_seeking(image: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Per pair (i, i + B/2): mean |x_i - x_j| / mean |w_i - w_j| (pairs share good window and type)."""
    h = image.shape[0] // 2
    dx = (image[:h] - image[h:]).abs().mean((1, 2, 3))
    dw = (w[:h] - w[h:]).abs().mean(1).clamp_min(MS_EPS)
    return dx / dw  # [B/2]


def _fake_inputs(st: PatchState, data: PatchData, types: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(z, type one-hot, good windows, type ids) of the fake batch: half B distinct pairs, two z per pair."""
    h = st.cfg.batch // 2
    good = data.goods[torch.randint(len(data.goods), (h,))].repeat(2, 1, 1, 1)  # [B, 3, P, P]
    c = onehot(types[:h], len(st.types)).repeat(2, 1)  # [B, T]
    z = torch.randn(st.cfg.batch, st.g_cfg.z_dim, device=good.device)
    return z, c, good, types[:h].repeat(2)


def _generate(G: PatchGenerator, z: torch.Tensor, c: torch.Tensor, good: torch.Tensor):
    """(composite, hard alpha, w, colour-head input) with fresh noise, as in training; D sees the binary alpha."""
    w = G.mapping(z, c)
    rgb, logit = G.synthesis.raw(w, good, noise_mode="random")
    image, alpha = G.compose(good, G.synthesis.colour_head(rgb), logit, hard=True)
    return image, alpha, w, rgb


def _d_phase(st: PatchState, fake: tuple[torch.Tensor, ...], real: tuple[torch.Tensor, ...], do_r1: bool) -> dict:
    """D main loss (+ lazy R1 on the augmented reals: grid_sample has no double backward)."""
    cfg = st.cfg
    f_img, f_mask, c_fake = fake
    r_img, r_mask, c_real = real
    d_fake = st.D(*augment(f_img, f_mask, cfg.augment, st.ada_p), c_fake)
    loss, stats = d_loss(st.D, d_fake, r_img, r_mask, c_real, cfg.augment, do_r1=do_r1, r1_gamma=cfg.r1_gamma,
                         r1_interval=cfg.r1_interval, ada_p=st.ada_p)
    loss.backward()
    return stats


def shape_policy(policy: str) -> str:
    """The shape D's augmentation: the run's ops without `color`, so its image input stays zeros."""
    return ",".join(name for name, _ in parse_policy(policy) if name != "color")


def _shape_phase(st: PatchState, f_mask: torch.Tensor, r_mask: torch.Tensor, c_fake: torch.Tensor,
                 c_real: torch.Tensor, do_r1: bool) -> dict[str, float]:
    """The mask-only D's step: G's hard masks against the real ones, image input zeros, same augmentation."""
    assert st.D_shape is not None and st.opt_D_shape is not None
    cfg = st.cfg
    st.opt_D_shape.zero_grad(set_to_none=True)
    zeros = f_mask.new_zeros(f_mask.shape[0], 3, *f_mask.shape[2:])
    policy = shape_policy(cfg.augment)
    d_fake = st.D_shape(*augment(zeros, f_mask, policy), c_fake)
    loss, stats = d_loss(st.D_shape, d_fake, zeros, r_mask, c_real, policy, do_r1=do_r1,
                         r1_gamma=cfg.r1_gamma, r1_interval=cfg.r1_interval)
    loss.backward()
    st.opt_D_shape.step()
    return {f"shape_{k}": v for k, v in stats.items()}


def _shape_adv(st: PatchState, alpha: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    assert st.D_shape is not None
    zeros = alpha.new_zeros(alpha.shape[0], 3, *alpha.shape[2:])
    return F.softplus(-st.D_shape(*augment(zeros, alpha, shape_policy(st.cfg.augment)), c)).mean()


def patch_step(st: PatchState, data: PatchData) -> dict[str, float]:
    """One D step (+ lazy R1, + the shape D's), one G step (adversarial, shape, colour range, mode seeking), EMA."""
    cfg, step = st.cfg, st.step
    torch.manual_seed(step_seed(cfg.seed, step, 0))
    idx = torch.randint(len(data.defects), (cfg.batch,))
    r_types = data.types[idx]
    real = (data.defects[idx], data.masks[idx], onehot(r_types, len(st.types)))
    z, c, good, f_types = _fake_inputs(st, data, r_types)

    set_trainable(st.G, False)
    set_trainable(st.D, True)
    st.opt_D.zero_grad(set_to_none=True)
    with torch.no_grad():
        f_img, f_mask, _, _ = _generate(st.G, z, c, good)
    do_r1 = cfg.r1_interval > 0 and cfg.r1_gamma > 0 and step % cfg.r1_interval == 0
    stats = _d_phase(st, (f_img, f_mask, c), real, do_r1)
    st.opt_D.step()
    if st.D_shape is not None:
        set_trainable(st.D_shape, True)
        stats.update(_shape_phase(st, f_mask, real[1], c, real[2], do_r1))
        set_trainable(st.D_shape, False)

    set_trainable(st.G, True)
    set_trainable(st.D, False)
    st.opt_G.zero_grad(set_to_none=True)
    image, alpha, w, rgb = _generate(st.G, z, c, good)
    adv = F.softplus(-st.D(*augment(image, alpha, cfg.augment, st.ada_p), c)).mean()
    ratio = mode_seeking(image, w)
    # maximise the diversity ratio, clipped: a constant gradient near collapse (1/ratio explodes exactly
    # there) and no reward for noise once latents already differ by `ms_cap`
    loss = adv - cfg.ms_weight * ratio.clamp(max=cfg.ms_cap).mean()
    if st.D_shape is not None:
        shape = _shape_adv(st, alpha, c)
        loss = loss + cfg.shape_weight * shape
        stats["loss_G_shape"] = shape.item()
    if cfg.range_weight > 0:
        assert st.colour_range is not None
        excess = range_loss(rgb, alpha, f_types, *st.colour_range)
        loss = loss + cfg.range_weight * excess
        stats["loss_G_range"] = excess.item()
    loss.backward()
    st.opt_G.step()
    st.G.mapping.update_w_avg(w.detach(), c)

    nimg = (step + 1) * cfg.batch
    half = min(cfg.ema_kimg * 1000, nimg * cfg.ema_rampup) if cfg.ema_rampup > 0 else cfg.ema_kimg * 1000
    ema_update(st.G_ema, st.G, 0.5 ** (cfg.batch / max(half, 1e-8)))
    st.step += 1
    if cfg.ada_target > 0:  # at the end of the step, from D's reals: D and G see one p per step
        st.ada_p = stats["ada_p"] = next_ada_p(st.ada_p, stats["D_real_sign"], cfg.ada_target, cfg.batch,
                                               cfg.ada_kimg)
    return {**stats, "loss_G": adv.item(), "ms_ratio": ratio.mean().item(),
            "mask_fake": alpha.detach().mean().item(), "mask_real": real[1].mean().item()}


# --------------------------------------------------------------------------------------------- entry


def _check_cfg(cfg: TrainPatchConfig) -> None:
    if cfg.batch < 2 or cfg.batch % 2:
        msg = f"--batch must be even and >= 2 (fakes come in pairs), got {cfg.batch}"
        raise ConfigError(msg)
    if cfg.design not in DESIGNS:
        msg = f"--design must be one of {', '.join(DESIGNS)}, got {cfg.design!r}"
        raise ConfigError(msg)
    if cfg.colour_head not in COLOUR_HEADS:
        msg = f"--colour-head must be one of {', '.join(COLOUR_HEADS)}, got {cfg.colour_head!r}"
        raise ConfigError(msg)
    for option, value in (("--shape-weight", cfg.shape_weight), ("--range-weight", cfg.range_weight)):
        if value < 0:
            msg = f"{option} must be >= 0, got {value}"
            raise ConfigError(msg)
    if not 0.25 <= cfg.scale <= 16 or cfg.steps < 1 or (cfg.minutes is not None and cfg.minutes <= 0):
        msg = f"need 0.25 <= --scale <= 16, --steps >= 1, --minutes > 0; got {cfg.scale}, {cfg.steps}, {cfg.minutes}"
        raise ConfigError(msg)
    try:
        PatchGeneratorConfig(window=cfg.window)
    except ValueError as e:
        msg = f"--window: {e}"
        raise ConfigError(msg) from None
    parse_policy(cfg.augment)
    if not 0 <= cfg.ada_target < 1 or cfg.ada_kimg <= 0:
        msg = f"need 0 <= --ada-target < 1 and --ada-kimg > 0, got {cfg.ada_target}, {cfg.ada_kimg}"
        raise ConfigError(msg)


def _resolve(cfg: TrainPatchConfig, out: Path, resume: bool,
             override: Sequence[str] = ()) -> tuple[TrainPatchConfig, Checkpoint | None]:
    """(cfg, checkpoint or None): a resume keeps the saved options except this call's budget, `override` and
    `data` (where the dataset lives now: a run may move to another machine; its held-in files must match).
    """
    ck = None
    if resume:
        ck = read_checkpoint(out / CKPT_NAME)
        if ck.meta.get("kind") != KIND:
            msg = f"{ck.path} is a {ck.meta.get('kind')!r} checkpoint, not a patch run"
            raise ConfigError(msg)
        keep = {k: getattr(cfg, k) for k in ("steps", "minutes", "data", *override)}
        cfg = from_dict(TrainPatchConfig, {**ck.configs["train_patch"], **keep})
    _check_cfg(cfg)
    return cfg, ck


def resolve_device(device: str | None) -> str:
    """`device`, or cuda when this machine has one, else cpu; an unusable one is a one-line ConfigError."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        msg = f"--device {device!r} is not usable here: {str(e).splitlines()[0]}"
        raise ConfigError(msg) from None
    return device


def train_patch(cfg: TrainPatchConfig, out: str | os.PathLike[str], *, resume: bool = False, tiny: bool = False,
                progress: bool = True, override: Sequence[str] = (), device: str | None = None) -> PatchResult:
    """Train (or resume) the layered patch GAN; see the module docstring for the run folder.

    Args:
        cfg: Training options (`cfg.data` is the MVTec-layout folder).
        out: Run folder.
        resume: Continue from `out/checkpoint.safetensors`; its options win except `steps`, `minutes`, `data`
            and the fields named in `override` (fine-tuning, e.g. D's augmentation or a shape D from here on).
        tiny: Toy-sized nets (tests and smoke runs).
        progress: Show the tqdm bar.
        device: Torch device (default cuda when available, else cpu); a run may change device on resume.
    """
    out = Path(out)
    cfg, ck = _resolve(cfg, out, resume, override)
    device = resolve_device(device)
    data = load_patch_data(cfg.data, window=cfg.window, scale=cfg.scale, held_in=cfg.held_in,
                           per_defect=cfg.per_defect, per_good=cfg.per_good, seed=cfg.seed).to(device)
    range_types = parse_types(cfg.range_types, data.type_names, cfg.data)
    if ck is not None and data.held_in != ck.meta["held_in"]:
        msg = f"--resume: the held-in defect files of {cfg.data} differ from the ones the run trained on"
        raise ConfigError(msg)
    if ck is not None:
        st = restore_state(ck, cfg, device)
    elif cfg.init_from:
        st = init_state(read_checkpoint(cfg.init_from), cfg, data, device)
    else:
        nets = model_configs(cfg.window, len(data.type_names), tiny, cfg.design, cfg.colour_head)
        st = build_state(cfg, *nets, data.type_names, data.held_in, device)
    prepare_run_dir(out, resume)  # after every check: a refused run writes nothing
    if ck is not None:
        restore_rng(ck)
    else:
        write_json(out / "config.json", {**st.configs(), "defect_types": st.types, "held_in": data.held_in,
                                         "n_defect_windows": len(data.defects), "n_good_windows": len(data.goods)})
        write_json(out / "held_in.json", data.held_in)
        write_grid(out / "reals.png", real_grid(data, cfg.grid_per_type))
    st.colour_range = head_input_bounds(st.G.synthesis, data, range_types)
    goods = fixed_goods(data, cfg.grid_per_type, cfg.seed)
    log = RunLogger(out, DistInfo(), total=cfg.steps, start=st.step, every=cfg.log_every, progress=progress,
                    desc="patch")
    history = run_budgeted(
        lambda: patch_step(st, data), lambda: st.step, log, cfg, save=lambda: st.save(out),
        sample=lambda: write_grid(out / "samples" / f"{st.step:06d}.png",
                                  sample_grid(st.G_ema, goods, st.types, cfg.seed)))
    wall = log.close()
    write_report(st, data, out, wall, KIND)
    return PatchResult(out=out, step=st.step, history=history, state=st)


def train_patch_cli(*, data: Path, out: Path, resume: bool, device: str | None = None, **options: Any) -> None:
    """`defectgen train patch`: options are TrainPatchConfig fields (None: the default, or `init_from`'s)."""
    given = {k: v for k, v in options.items() if v is not None}
    base: dict[str, Any] = {}
    if given.get("init_from") and not resume:
        ck = read_checkpoint(given["init_from"])
        if ck.meta.get("kind") != KIND:
            msg = f"--init-from {ck.path} is a {ck.meta.get('kind')!r} checkpoint, not a patch run"
            raise ConfigError(msg)
        base = {k: v for k, v in ck.configs["train_patch"].items() if k not in ("steps", "minutes", "init_from")}
        given["init_from"] = str(given["init_from"])
    cfg = from_dict(TrainPatchConfig, {**base, "data": str(data), **given})
    tunable = ("augment", "shape_weight", "range_weight", "range_types", "ada_target", "ada_kimg")  # resume may change
    result = train_patch(cfg, out, resume=resume, override=[k for k in tunable if k in given], device=device)
    print(f"trained to step {result.step} -> {out / CKPT_NAME} (samples: {out / 'samples'}, "
          f"report: {out / 'report.json'})")
