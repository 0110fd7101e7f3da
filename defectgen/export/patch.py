"""Patch mode in the exporter: the layered patch G behind the objective's interface, and `export --patch RUN`.

A patch run (`defectgen train patch`, `training/patch_gan.py`) holds a `PatchGenerator` whose synthesis draws a
colour layer and an alpha/mask logit over the *real* good window, and a `PatchDiscriminator`. `LayeredG` gives
that G the interface `objective.py` and `graphs.py` expect of a generator, with `layered = True`:

- `synthesis(w+, good) -> (composite, mask_logit)`: the composite is the smooth one (σ alpha, `hard=False`),
  so an inversion's gradient reaches the alpha; alpha 0 gives the good window back exactly;
- `mapping(z, type_onehot)` takes the bundle's one-hot over `["good", *defect types]` (the manifest's types
  always start with "good") and drops the "good" column by a fixed MatMul; a "good" one-hot stands for the
  average type (each defect type's embedding weighted 1/T), since a patch G always draws a defect;
- `w_avg` (T + 1, W): row 0 ("good") is the mean of the types' rows, so the prior's centre (the mean over all
  rows) is the patch G's unconditional centre.

Without an encoder the bundle has no encoder graph, starts from `w_avg` (`defaults.init = "wavg"`), and its
`dom` column is zeros with λ_dom = 0. With one (`--encoder`, a `defectgen train patch-encoder` run: the
project's `Encoder` at side P, E(window, mask) -> w+) the bundle is like a whole-part one: encoder graph,
`init = "encoder"`, a live `dom` term. The bank and the real parity inputs are windows at the data's native
pixel scale, from the run's held-in images only (`bank.py`).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from defectgen import GOOD
from defectgen.errors import BundleError, DefectgenError
from defectgen.nets.patch import PatchDiscriminator, PatchDiscriminatorConfig, PatchGenerator, composite
from defectgen.runtime.bundle.manifest import SPACES, PatchInfo

log = logging.getLogger("defectgen.export")

HELD_IN_NAME = "held_in.json"


class _GoodFirstMapping(nn.Module):
    """(z, one-hot over ["good", *types]) -> w: the patch mapping after a fixed (T + 1, T) selection MatMul."""

    def __init__(self, mapping: nn.Module, n_types: int) -> None:
        super().__init__()
        self.inner = mapping
        select = torch.cat([torch.full((1, n_types), 1.0 / n_types), torch.eye(n_types)])  # [T + 1, T]
        self.register_buffer("select", select)

    def forward(self, z: Tensor, type_onehot: Tensor) -> Tensor:
        return self.inner(z, type_onehot @ self.select)


class _CompositeSynthesis(nn.Module):
    """(w+ or w, good window) -> (smooth composite of the defect layer over `good`, mask logit).

    A full G's image is its own window (the good window is an input it ignores).
    """

    def __init__(self, synthesis: nn.Module) -> None:
        super().__init__()
        self.inner = synthesis

    @property
    def num_ws(self) -> int:
        return int(self.inner.num_ws)

    def forward(self, latent: Tensor, good: Tensor) -> tuple[Tensor, Tensor]:
        colour, mask_logit = self.inner(latent, good)
        image, _ = composite(good, colour, mask_logit, hard=False, layered=self.inner.cfg.layered)
        return image, mask_logit


class LayeredG(nn.Module):
    """A `PatchGenerator` with the generator interface of the objective (module docstring).

    Args:
        G: the (EMA) patch generator; its weights are shared, not copied.
    """

    layered = True

    def __init__(self, G: PatchGenerator) -> None:
        super().__init__()
        self.G = G
        self.cfg = G.cfg  # `res` (= window) and `z_dim`, what graphs.model_dims reads
        n = G.cfg.n_types
        self.mapping = _GoodFirstMapping(G.mapping, n)
        self.synthesis = _CompositeSynthesis(G.synthesis)
        table = G.w_avg.detach().clone()  # [T, W]
        self.register_buffer("w_avg", torch.cat([table.mean(0, keepdim=True), table]))  # [T + 1, W]

    @property
    def num_ws(self) -> int:
        return int(self.G.num_ws)


@dataclass
class PatchRun:
    """What the exporter needs from a patch run folder."""

    G: LayeredG
    D: PatchDiscriminator
    types: list[str]  # bundle types: "good" first, then the run's defect types in id order
    held_in: dict[str, list[str]]  # type -> defective image file names the run trained on
    patch: PatchInfo  # window and data px per model px
    configs: dict[str, Any]  # the checkpoint's configs (+ held_in), for the manifest
    data: str | None  # the dataset the run trained on


def load_patch_run(run: str | os.PathLike[str]) -> PatchRun:
    """EMA generator, D, types, held-in list and window of a `defectgen train patch` run folder or checkpoint.

    Raises:
        DefectgenError: no checkpoint, or a checkpoint of another kind (a GAN or encoder run).
    """
    from defectgen.training.checkpoint import read_checkpoint
    from defectgen.training.config import from_dict
    from defectgen.training.patch_gan import KIND, load_patch_generator

    ck = read_checkpoint(run)
    if ck.meta.get("kind") != KIND:
        msg = f"--patch {run}: {ck.path} is a {ck.meta.get('kind')!r} checkpoint, not a `defectgen train patch` run"
        raise BundleError(msg)
    G = load_patch_generator(ck.path)
    D = PatchDiscriminator(from_dict(PatchDiscriminatorConfig, ck.configs["patch_discriminator"]))
    D.load_state_dict(ck.state_dict("D"))
    D.eval().requires_grad_(False)
    held_in = dict(ck.meta.get("held_in") or {})
    held_file = ck.path.parent / HELD_IN_NAME
    if held_file.is_file():  # the run folder's own record of what it saw
        held_in = json.loads(held_file.read_text())
    train = ck.configs.get("train_patch", {})
    scale = float(ck.meta.get("scale", train.get("scale", 1.0)))
    types = [GOOD, *ck.meta["defect_types"]]
    configs = {**ck.configs, "held_in": held_in, "checkpoint_step": ck.step}
    return PatchRun(G=LayeredG(G), D=D, types=types, held_in=held_in,
                    patch=PatchInfo(window=int(G.cfg.window), scale=scale,
                                    design="layered" if G.cfg.layered else "full"), configs=configs,
                    data=train.get("data") or None)


def export_patch_cli(*, run: Path, out: Path, data: Path | None, spaces: list[str] | None, batch: list[int],
                     opset: int, verify: bool, zip_: bool, steps: int | None = None,
                     guide_weight: float | None = None, encoder: Path | None = None,
                     mask_mode: str | None = None, mask_shape: str | None = None) -> Path:
    """`defectgen export --patch RUN [--encoder E_RUN]`: a patch-mode bundle (module docstring).

    Args:
        run: patch run folder or checkpoint (G_ema and D are used).
        encoder: optional patch encoder run or checkpoint (None: no encoder graph, `init = wavg`, λ_dom = 0).
        out: bundle folder to write.
        data: dataset for the native-scale bank and real-window parity (default: the one the run trained on).
        spaces, batch, opset, verify, zip_: as for `defectgen export`.
        steps, guide_weight, mask_mode, mask_shape: the bundle's recommended `defectgen run --steps /
            --guide-weight / --mask-mode / --mask-shape`.

    Returns:
        The bundle folder.
    """
    from defectgen.export.bundle import _progress_to_stderr, check_run_defaults, export_bundle

    run_defaults = check_run_defaults(steps, guide_weight, mask_mode, mask_shape)
    _progress_to_stderr()
    pr = load_patch_run(run)
    E = None
    if encoder is not None:
        from defectgen.training.checkpoint import load_encoder, read_checkpoint

        E = load_encoder(encoder)
        pr.configs = {**pr.configs, **{k: v for k, v in read_checkpoint(encoder).configs.items()
                                       if k not in pr.configs}}
    if data is None:
        if pr.data and Path(pr.data).is_dir():
            data = Path(pr.data)
            log.info("defect bank and real-window parity from the run's training data %s", data)
        else:
            log.warning("the run's training data %r is not here; pass --data for a defect bank", pr.data)
    if data is not None and not pr.held_in:
        msg = f"--patch {run}: the run records no held-in images ({HELD_IN_NAME}); cannot pick bank defects"
        raise DefectgenError(msg)
    return export_bundle(pr.G, E, pr.D, out=out, spaces=spaces or list(SPACES), batches=batch or [1, 4, 8],
                         opset=opset, data_root=data, types=pr.types, configs=pr.configs, verify=verify, zip_=zip_,
                         run_defaults=run_defaults, patch=pr.patch, held_in=pr.held_in)
