"""Training configs: frozen dataclasses, dumped as `config.json` in every run folder and into each checkpoint.

Model configs (`GeneratorConfig`, `DiscriminatorConfig`, `EncoderConfig`) live with the nets; these are the
*training* options. Every field has a default and a why-comment so `--dry-run` output explains itself.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from defectgen.errors import DefectgenError


class ConfigError(DefectgenError, ValueError):
    """A training option with a bad value (one line on the CLI, exit 2)."""


@dataclass(frozen=True)
class TrainGanConfig:
    """Options of `defectgen train gan` (the model shape lives in GeneratorConfig/DiscriminatorConfig)."""

    data: str = ""                  # MVTec-layout category folder (as given; recorded for provenance)
    res: int = 64                   # model resolution: 64, 128 or 256
    kimg: float = 50.0              # training length: thousands of real images shown to D (all ranks together)
    batch: int = 16                 # images per process and step; the global batch is batch * world_size
    seed: int = 0                   # seeds weights, data order, z and augmentation
    lr_g: float = 0.0025            # Adam lr of G (StyleGAN2 default for small models)
    lr_d: float = 0.0025            # Adam lr of D
    betas: tuple[float, float] = (0.0, 0.99)  # StyleGAN2 Adam betas: no first-moment momentum keeps GANs stable
    r1_gamma: float = 0.1           # R1 weight; NVlabs' heuristic 0.0002 * res^2 / batch gives 0.05 at 64 px, b16
    r1_interval: int = 16           # lazy R1: every N D steps, scaled by N (StyleGAN2 lazy regularisation)
    ema_kimg: float = 2.0           # G_ema half-life in thousands of images; short because runs are short
    ema_rampup: float = 0.05        # EMA half-life at most rampup * images seen so far (early G_ema follows G)
    augment: str = "translation,flip,color"  # DiffAugment ops (comma list; "" = none); see training/augment.py
    good_share: float = 0.5         # expected share of good images in a batch; defect types split the rest evenly
    defect_fraction: float = 1.0    # fraction of each defect type's images used for training (rest held out)
    mask_stat: float = 0.1          # per-type mask-coverage matching (see losses.py); 0 = pure adversarial
    mask_ste: bool = True           # D sees G's mask thresholded at 0.5 (straight-through gradient), as reals
    mask_seg: float = 0.0           # BCE of G's mask vs a real-data segmenter's labels of G's image (segmenter.py)
    seg_steps: int = 300            # segmenter fitting steps (before the GAN starts; batch = `batch`)
    seg_width: int = 8              # segmenter channels at full resolution
    log_every: int = 20             # steps between log.jsonl lines
    sample_every: int = 200         # steps between sample grids (samples/NNNNNN.png)
    ckpt_every: int = 200           # steps between checkpoint writes (also written at the end)
    grid_per_type: int = 6          # samples per type in grids (fixed z)

    def total_steps(self, world_size: int = 1) -> int:
        """Steps needed to show `kimg` thousand real images to D across all processes."""
        return max(1, math.ceil(self.kimg * 1000 / (self.batch * world_size)))


@dataclass(frozen=True)
class TrainEncoderConfig:
    """Options of `defectgen train encoder` (idinvert domain-guided encoder)."""

    data: str = ""                  # MVTec-layout category folder
    gan: str = ""                   # GAN run folder or checkpoint the encoder inverts
    steps: int = 2000               # optimisation steps
    batch: int = 16                 # per process; half real images, half generator samples
    seed: int = 0
    lr_e: float = 0.001             # Adam lr of E; idinvert's 1e-4 is for 100k+ steps, CPU runs are ~1k steps
    lr_d: float = 0.0001            # Adam lr of the fine-tuned D (idinvert trains D alongside E)
    betas: tuple[float, float] = (0.9, 0.99)
    w_pix: float = 1.0              # pixel MSE of G(E(x)) vs x (images in [-1, 1])
    w_feat: float = 0.005           # feature MSE (D trunk or VGG16); idinvert uses 5e-5 on raw VGG features
    w_adv: float = 0.01             # non-saturating adversarial term on reconstructions (idinvert: 0.1 at 256 px)
    w_mask: float = 0.5             # BCE of G's mask logit vs the input mask
    w_latent: float = 1.0           # MSE of E(G(w+)) vs w+ on generator samples (known latent)
    r1_gamma: float = 1.0           # R1 of the fine-tuned D
    r1_interval: int = 16
    train_d: bool = True            # fine-tune D against reconstructions (idinvert); off = frozen D
    vgg: str | None = None          # VGG16 safetensors for the feature loss; None = D trunk
    init_from: str | None = None    # encoder run/checkpoint whose E and D weights start this run (fresh Adam)
    holdout: float = 0.1            # fraction of real good + defective images held out for the report
    good_share: float = 0.5         # share of good images among the real half of a batch
    log_every: int = 20
    sample_every: int = 200
    ckpt_every: int = 200


@dataclass(frozen=True)
class TrainPatchConfig:
    """Options of `defectgen train patch` (patch G and D; model shapes live in nets/patch.py)."""

    data: str = ""                  # MVTec-layout category folder
    window: int = 32                # P: window side in model px
    scale: float = 1.0              # data px per model px (1 = native resolution)
    design: str = "layered"         # "layered": defect layer over the real good window; "full": G draws it all
    colour_head: str = "tanh"       # G's colour output: "tanh", "linear" (StyleGAN2's ToRGB, unbounded) or
    #                                 "wide" (1.2 tanh(x / 1.2): bounded, with a gradient left at black)
    held_in: int | None = None      # defect images per type to train on; None = first third (ceil(n / 3))
    steps: int = 100_000            # total optimisation steps (a --minutes budget usually ends a call first)
    minutes: float | None = None    # wall-clock budget of this call; None = run to `steps`
    batch: int = 32                 # windows per step (even: fakes come in pairs for the mode-seeking term)
    seed: int = 0                   # seeds windows, weights, z and augmentation
    lr_g: float = 0.002             # Adam lr of G
    lr_d: float = 0.002             # Adam lr of D
    betas: tuple[float, float] = (0.0, 0.99)
    r1_gamma: float = 1.0           # R1 weight; the probe that showed this design learns used 1.0 every 4 steps
    r1_interval: int = 4            # lazy R1 interval
    ema_kimg: float = 4.0           # G_ema half-life in thousands of windows (~125 steps at batch 32)
    ema_rampup: float = 0.05        # EMA half-life at most rampup * windows seen so far
    augment: str = "translation,color"  # DiffAugment ops applied to all D inputs (image and mask together)
    ms_weight: float = 0.1          # mode-seeking weight (DFMGAN/MSGAN): different latents -> different defects
    ms_cap: float = 1.0             # the ratio |dx| / |dw| stops being rewarded above this (no reward for noise)
    shape_weight: float = 0.0       # weight of a mask-only shape D's adversarial term on G (0: no shape D)
    range_weight: float = 0.0       # weight of the colour-range term on G (training/colour_range.py; 0: off)
    range_types: str = ""           # comma list of the defect types the term bounds ("": every type)
    init_from: str | None = None    # patch run/checkpoint (full or slim) whose G_ema and D start this run
    ada_target: float = 0.0         # adaptive augmentation (ADA): raise p while E[sign D(real)] > this
    #                                 (0.6: 80 % of reals called real); 0 = off
    ada_kimg: float = 100.0         # windows (thousands) for p to move from 0 to 1 (updated every step)
    per_defect: int = 64            # augmented windows cut per held-in defect image
    per_good: int = 8               # augmented windows cut per good training image
    log_every: int = 20             # steps between log.jsonl lines
    sample_every: int = 200         # steps between sample grids (samples/NNNNNN.png)
    ckpt_every: int = 200           # steps between checkpoint writes (also written at the end)
    grid_per_type: int = 6          # samples per type in grids (fixed z and good windows)



@dataclass(frozen=True)
class TrainPatchEncoderConfig:
    """Options of `defectgen train patch-encoder`: E(window, mask) -> w+ of a layered patch G (its init)."""

    data: str = ""                  # MVTec-layout category folder (the patch run's)
    patch: str = ""                 # `train patch` run folder or checkpoint (its G_ema and D stay frozen)
    steps: int = 100_000            # total optimisation steps (a --minutes budget usually ends a call first)
    minutes: float | None = None    # wall-clock budget of this call; None = run to `steps`
    batch: int = 32                 # windows per step: half G samples (known w+), half real held-in windows
    seed: int = 0                   # seeds windows, weights, z and batches
    lr: float = 0.001               # Adam lr of E (as `train encoder`)
    betas: tuple[float, float] = (0.9, 0.99)
    w_latent: float = 1.0           # MSE of E(x) vs the known w+ (G samples only)
    w_pix: float = 1.0              # pixel MSE of the soft composite G(E(x), good) vs x (images in [-1, 1])
    w_mask: float = 1.0             # BCE of G's mask logit vs the input mask: the init must put the mask there
    w_dice: float = 1.0             # soft Dice loss of sigmoid(G's mask logit) vs the mask: overlap, not per pixel
    #                                 (572-step A/B: held-out real mask IoU 0.30 -> 0.50, thin types most)
    w_feat: float = 0.0             # MSE of the patch D's features(); 0 = off (a D pass per step on 2 CPU cores)
    type_start: bool = False        # start = E(x, m) - E.w_avg + G.w_avg[type] (an offset from the type's mean w);
    #                                 off: no better in an A/B (IoU 0.50 off, 0.48 on); step graphs take no type
    channel_base: int = 1024        # encoder channels at side r = min(base // r, max)
    channel_max: int = 128
    per_defect: int = 64            # windows cut per held-in defect image (training, as `train patch`)
    eval_per_defect: int = 4        # windows cut per held-out defect image (report)
    per_good: int = 8               # good windows per train/good image (G samples are drawn on them)
    eval_samples: int = 256         # held-out G samples in the report (on test/good windows, fresh z)
    log_every: int = 20
    sample_every: int = 200         # steps between samples/NNNNNN.png (held-out real windows through E)
    ckpt_every: int = 200


C = TypeVar("C")


def to_dict(cfg: Any) -> dict[str, Any]:
    """`asdict` with tuples as lists, so a JSON round trip compares equal."""
    return json.loads(json.dumps(asdict(cfg)))


def from_dict(cls: type[C], d: dict[str, Any]) -> C:
    """Rebuild a (frozen) config dataclass from `to_dict` output; tuple fields come back as tuples.

    Unknown keys raise, so a checkpoint from a newer version fails loudly instead of silently dropping options.
    """
    names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(d) - set(names))
    if unknown:
        msg = f"{cls.__name__} has no field(s) {unknown}; checkpoint from another defectgen version?"
        raise ValueError(msg)
    kwargs = {}
    for k, v in d.items():
        default = names[k].default
        kwargs[k] = tuple(v) if isinstance(default, tuple) and isinstance(v, list) else v
    return cls(**kwargs)


def replace(cfg: C, **changes: Any) -> C:
    return dataclasses.replace(cfg, **changes)  # type: ignore[type-var]


__all__ = ["ConfigError", "TrainEncoderConfig", "TrainGanConfig", "TrainPatchConfig", "TrainPatchEncoderConfig",
           "from_dict", "replace", "to_dict"]
