"""Checkpoints: one `checkpoint.safetensors` per run folder, no pickle anywhere.

Layout of the file (all tensors flat, prefixed by their owner)::

    G.<param>            generator (training copy)        } the GAN run
    G_ema.<param>        EMA generator (what gets exported)}
    D.<param>            discriminator
    E.<param>            encoder (encoder runs)
    opt_G.state.<i>.<k>  optimizer state tensors (Adam exp_avg, exp_avg_sq, step) by parameter index
    rng.torch            torch CPU RNG state (uint8); rng.cuda.<i> per CUDA device when present

and the safetensors metadata key `defectgen` holds JSON: format/version, kind ("gan" or "encoder"), step,
the resolved configs (`configs.generator`, `configs.discriminator`, `configs.encoder`, `configs.train_gan`,
`configs.train_encoder`), `defect_types`, optimizer param groups, and the python/numpy RNG states.
`load_generator` / `load_encoder` rebuild nets from that config + tensors, so a checkpoint never depends on
pickled classes and `torch.load` is never used.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from defectgen.data.imageio import atomic_write_bytes
from defectgen.errors import DataError
from defectgen.nets.encoder import Encoder, EncoderConfig
from defectgen.nets.stylegan import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig
from defectgen.training.config import from_dict

CKPT_NAME = "checkpoint.safetensors"
FORMAT = "defectgen-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    """A checkpoint read back: flat tensors + the JSON metadata."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    path: Path

    @property
    def step(self) -> int:
        return int(self.meta.get("step", 0))

    @property
    def configs(self) -> dict[str, dict[str, Any]]:
        return self.meta.get("configs", {})

    def state_dict(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors under `prefix.` with the prefix stripped (a module's state_dict)."""
        p = prefix + "."
        out = {k[len(p):]: v for k, v in self.tensors.items() if k.startswith(p)}
        if not out:
            have = sorted({k.split(".")[0] for k in self.tensors})
            msg = f"checkpoint {self.path} has no {prefix!r} tensors (has {', '.join(have)})"
            raise DataError(msg)
        return out

    def has(self, prefix: str) -> bool:
        return any(k.startswith(prefix + ".") for k in self.tensors)


# ---------------------------------------------------------------------------------------------- flattening
def flat_module(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors that share storage, and we never want to alias live weights
    return {f"{prefix}.{k}": v.detach().cpu().clone().contiguous() for k, v in module.state_dict().items()}


def flat_optimizer(prefix: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state -> (tensors `prefix.state.<i>.<k>`, JSON part with param groups and scalar state)."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{prefix}.state.{idx}.{k}"] = v.detach().cpu().clone().contiguous()
            else:
                scalars.setdefault(str(idx), {})[k] = v
    groups = json.loads(json.dumps(sd["param_groups"], default=_json_default))
    return tensors, {"param_groups": groups, "scalars": scalars}


def load_optimizer(opt: torch.optim.Optimizer, ckpt: Checkpoint, prefix: str) -> None:
    """Restore an optimizer written by `flat_optimizer` (same parameter order required)."""
    info = ckpt.meta.get("optim", {}).get(prefix)
    if info is None:
        msg = f"checkpoint {ckpt.path} has no optimizer {prefix!r} (a --slim copy cannot be resumed)"
        raise DataError(msg)
    state: dict[int, dict[str, Any]] = {}
    p = prefix + ".state."
    for k, v in ckpt.tensors.items():
        if k.startswith(p):
            idx, name = k[len(p):].split(".", 1)
            state.setdefault(int(idx), {})[name] = v
    for idx, sc in info["scalars"].items():
        state.setdefault(int(idx), {}).update(sc)
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in info["param_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})


def _json_default(o: object) -> object:
    if isinstance(o, tuple):
        return list(o)
    if torch.is_tensor(o):
        return o.tolist()
    msg = f"not JSON serialisable in a checkpoint: {type(o).__name__}"
    raise TypeError(msg)


# ---------------------------------------------------------------------------------------------- RNG
def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """All global RNG states: torch (tensor), CUDA (tensors), python and numpy (JSON)."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    py = random.getstate()
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    meta = {"python": [py[0], list(py[1]), py[2]],
            "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)]}
    return tensors, meta


def restore_rng(ckpt: Checkpoint) -> None:
    """Inverse of `capture_rng` (CUDA states only when this machine has as many devices)."""
    torch.set_rng_state(ckpt.tensors["rng.torch"])
    cuda = [ckpt.tensors[k] for k in sorted(ckpt.tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    rng = ckpt.meta.get("rng", {})
    if "python" in rng:
        v, keys, gauss = rng["python"]
        random.setstate((v, tuple(keys), gauss))
    if "numpy" in rng:
        name, keys, pos, has_gauss, gauss = rng["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))


# ---------------------------------------------------------------------------------------------- file I/O
def save_checkpoint(path: str | os.PathLike[str], *, kind: str, step: int,
                    modules: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                    configs: dict[str, dict[str, Any]], extra: dict[str, Any] | None = None,
                    with_rng: bool = True) -> Path:
    """Write one safetensors checkpoint atomically (temp file + rename: a crash never leaves half a file).

    Args:
        path: Target file (usually `<run>/checkpoint.safetensors`).
        kind: "gan" or "encoder".
        step: Completed optimisation steps.
        modules: name -> module; tensors are stored as `<name>.<param>`.
        optimizers: name -> optimizer; stored as `<name>.state.<i>.<k>` + param groups in the metadata.
        configs: name -> resolved config dict (asdict).
        extra: More JSON metadata (defect types, data split, ...).
        with_rng: Store the global RNG states (needed for an exact resume).
    """
    tensors: dict[str, torch.Tensor] = {}
    for name, m in modules.items():
        tensors.update(flat_module(name, m))
    optim_meta = {}
    for name, opt in optimizers.items():
        t, info = flat_optimizer(name, opt)
        tensors.update(t)
        optim_meta[name] = info
    meta: dict[str, Any] = {"format": FORMAT, "version": VERSION, "kind": kind, "step": int(step),
                            "configs": configs, "optim": optim_meta, **(extra or {})}
    if with_rng:
        rng_t, rng_meta = capture_rng()
        tensors.update(rng_t)
        meta["rng"] = rng_meta
    data = st_save(tensors, metadata={"defectgen": json.dumps(meta, default=_json_default)})
    return atomic_write_bytes(path, data)


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """A run folder or a checkpoint file -> the checkpoint file; `DataError` when there is none."""
    path = Path(path)
    if path.is_dir():
        path = path / CKPT_NAME
    if not path.is_file():
        msg = f"no checkpoint at {path} (give a run folder or a .safetensors file)"
        raise DataError(msg)
    return path


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint (run folder or file) into memory, checking its format."""
    path = resolve_checkpoint(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta_json = (f.metadata() or {}).get("defectgen")
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except (OSError, ValueError, RuntimeError) as e:
        msg = f"not a readable safetensors checkpoint ({e}): {path}"
        raise DataError(msg) from None
    if meta_json is None:
        msg = f"safetensors file has no defectgen metadata (not written by defectgen?): {path}"
        raise DataError(msg)
    meta = json.loads(meta_json)
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        msg = (f"checkpoint format {meta.get('format')!r} v{meta.get('version')} != {FORMAT!r} v{VERSION}: "
               f"{path}")
        raise DataError(msg)
    return Checkpoint(tensors=tensors, meta=meta, path=path)


def slim_checkpoint(src: str | os.PathLike[str], dst: str | os.PathLike[str],
                    keep: tuple[str, ...] = ("G_ema", "D", "E")) -> Path:
    """Copy a checkpoint keeping only the named nets (no optimizer/RNG state): what ships in models/default.

    A slim copy loads with `load_generator`/`load_encoder` and can seed a new run, but `--resume` refuses it.
    """
    ck = read_checkpoint(src)
    tensors = {k: v for k, v in ck.tensors.items() if k.split(".", 1)[0] in keep}
    meta = {k: v for k, v in ck.meta.items() if k not in ("rng", "optim")}
    meta["slim"] = True
    data = st_save(tensors, metadata={"defectgen": json.dumps(meta, default=_json_default)})
    return atomic_write_bytes(dst, data)


# ---------------------------------------------------------------------------------------------- nets
def load_generator(path: str | os.PathLike[str], *, ema: bool = True, device: str = "cpu") -> Generator:
    """Rebuild the generator of a GAN run (folder or checkpoint file): `G_ema` by default, in eval mode.

    The config comes from the checkpoint (`configs.generator`), so the architecture always matches the weights.
    """
    ck = read_checkpoint(path)
    name = "G_ema" if ema and ck.has("G_ema") else "G"
    G = Generator(from_dict(GeneratorConfig, ck.configs["generator"]))
    G.load_state_dict(ck.state_dict(name))
    return G.to(device).eval().requires_grad_(False)


def load_discriminator(path: str | os.PathLike[str], *, device: str = "cpu") -> Discriminator:
    """Rebuild the discriminator of a GAN run (or the fine-tuned one of an encoder run), frozen, eval mode."""
    ck = read_checkpoint(path)
    D = Discriminator(from_dict(DiscriminatorConfig, ck.configs["discriminator"]))
    D.load_state_dict(ck.state_dict("D"))
    return D.to(device).eval().requires_grad_(False)


def load_encoder(path: str | os.PathLike[str], *, device: str = "cpu") -> Encoder:
    """Rebuild the encoder of an encoder run (folder or checkpoint file), frozen, eval mode."""
    ck = read_checkpoint(path)
    if "encoder" not in ck.configs:
        msg = f"{ck.path} is a {ck.meta.get('kind')!r} checkpoint, not an encoder run"
        raise DataError(msg)
    E = Encoder(from_dict(EncoderConfig, ck.configs["encoder"]))
    E.load_state_dict(ck.state_dict("E"))
    return E.to(device).eval().requires_grad_(False)


def defect_types(path: str | os.PathLike[str]) -> list[str]:
    """The type list (id order, "good" first) a GAN or encoder checkpoint was trained with."""
    return list(read_checkpoint(path).meta["defect_types"])
