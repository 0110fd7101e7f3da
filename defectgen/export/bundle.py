"""Write a bundle (docs/bundle.md): graphs + defect bank + verify report + manifest, atomically.

    out = export_bundle(G, E, D, out="hazelnut_bundle", spaces=["wplus", "w", "z"], batches=[1, 4, 8],
                        data_root="data/hazelnut", types=["good", "crack", "cut", "hole", "print"])

Everything is written into `OUT.tmp-<pid>` next to `OUT`; only when every graph is exported, the parity check
passed (if asked), the manifest is written and the runtime's own `Bundle.load` accepts the folder is it renamed
to `OUT`. A failure anywhere removes the temp folder, so `OUT` is either the previous bundle or the new one,
never half of either. An existing `OUT` is replaced only if it is a bundle (has `manifest.json`) or empty.

Patch mode (`patch=PatchInfo(...)`, a layered G from `export/patch.py`): the manifest's `patch` section,
`resolution` = the window, and a bank of native-scale crops from the run's held-in images only. Any bundle
exported with `E=None` has no encoder graph, `defaults.init = "wavg"` and λ_dom = 0 (its `dom` column is 0).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sys
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
import onnxruntime
import torch
from torch import nn

from defectgen import __version__
from defectgen.errors import BundleError, DataError, DefectgenError, choice_error
from defectgen.export import onnx_tools
from defectgen.export.bank import RealInputs, build_defect_bank, real_inputs, with_part_size
from defectgen.export.graphs import GraphResult, ModelDims, export_graph, model_dims, plan
from defectgen.export.objective import DEFAULT_LAMBDAS
from defectgen.export.shared_weights import WEIGHTS_NAME, share_weights
from defectgen.export.verify import VERIFY_NAME, Bounds, verify_graphs
from defectgen.runtime.bundle.loader import Bundle, _read_manifest
from defectgen.runtime.bundle.manifest import (
    MANIFEST_NAME,
    SPACES,
    FileEntry,
    Manifest,
    PatchInfo,
    RunDefaults,
    finalize_manifest,
)
from defectgen.runtime.bundle.sections import MASK_MODES, MASK_SHAPES

log = logging.getLogger("defectgen.export")

MIN_OPSET = 18  # the dynamo exporter's lowest well-supported opset; Reduce* axes as inputs from 18 on


def _check_request(spaces: Sequence[str], batches: Sequence[int], opset: int) -> None:
    if not spaces:
        msg = f"no latent space to export; choose from {', '.join(SPACES)}"
        raise DefectgenError(msg)
    for s in spaces:
        if s not in SPACES:
            raise DefectgenError(choice_error("latent space", s, SPACES))
    if len(set(spaces)) != len(spaces) or len(set(batches)) != len(batches):
        msg = f"duplicate spaces or batch sizes: spaces={list(spaces)}, batches={list(batches)}"
        raise DefectgenError(msg)
    if not batches or any(int(b) < 1 or int(b) > 256 for b in batches):
        msg = f"step batch sizes must be integers in [1, 256], got {list(batches)}"
        raise DefectgenError(msg)
    if opset < MIN_OPSET:
        msg = f"opset {opset} is too old: the step graphs need opset >= {MIN_OPSET}"
        raise DefectgenError(msg)


def _check_nets(G: nn.Module, E: nn.Module | None, dims: ModelDims, types: Sequence[str],
                patch: PatchInfo | None) -> None:
    if len(types) != dims.num_types or not types or types[0] != "good":
        msg = (f"the generator has {dims.num_types} types (w_avg rows) but types={list(types)} "
               f"(need exactly that many, 'good' first)")
        raise DefectgenError(msg)
    if (patch is not None) != dims.layered or (patch is not None and patch.window != dims.resolution):
        msg = (f"patch={patch} does not fit the generator (layered={dims.layered}, resolution {dims.resolution}): "
               f"a patch bundle needs a layered G whose window is the resolution")
        raise DefectgenError(msg)
    if E is None:
        return
    e_cfg = getattr(E, "cfg", None)
    e_sizes = (getattr(e_cfg, "res", dims.resolution), getattr(E, "num_ws", dims.num_ws),
               getattr(e_cfg, "w_dim", dims.w_dim))
    if e_sizes != (dims.resolution, dims.num_ws, dims.w_dim):
        msg = (f"encoder (res, num_ws, w_dim) = {e_sizes} does not match the generator's "
               f"{(dims.resolution, dims.num_ws, dims.w_dim)}: was it trained against this GAN?")
        raise DefectgenError(msg)


def _prepare_out(out: Path) -> Path:
    """Check `out` may be (re)placed and return the temp folder to write into."""
    if out.exists() and not (out / MANIFEST_NAME).is_file() and (not out.is_dir() or any(out.iterdir())):
        msg = f"{out} exists and is not a bundle (no {MANIFEST_NAME}); refusing to overwrite it"
        raise DefectgenError(msg)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def _make_readable(folder: Path) -> None:
    """Atomic writers create files 0600 (mkstemp); a bundle is read by other users and services: 0644/0755."""
    mask = os.umask(0)
    os.umask(mask)
    for p in [folder, *folder.rglob("*")]:
        p.chmod((0o755 if p.is_dir() else 0o644) & ~mask)


def _swap_in(tmp: Path, out: Path) -> None:
    """Rename the finished temp folder to `out`, replacing an old bundle there (old moved aside first)."""
    old = None
    if out.exists():
        old = out.parent / f"{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        if old is not None:
            os.replace(old, out)  # put the previous bundle back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_zip(folder: Path, dest: Path) -> Path:
    """Zip a bundle folder atomically to `dest`: `manifest.json` and the files it lists, at the zip's root.

    Runtime caches that may have appeared in the folder (`.ort_cache/`, ...) are not bundle content and stay out.

    Args:
        folder: the bundle folder.
        dest: the `.zip` to write.

    Returns:
        `dest`.
    """
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            names = [MANIFEST_NAME, *sorted(_read_manifest(folder).files)]
            for name in names:
                zf.write(folder / name, name)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _file_entry(g: GraphResult) -> FileEntry:
    return FileEntry(role=g.kind, space=g.space, batch=g.batch, inputs=g.inputs, outputs=g.outputs)  # type: ignore[arg-type]


def _net_configs(G: nn.Module, E: nn.Module | None, D: nn.Module) -> dict[str, Any]:
    out = {}
    for name, net in (("generator", G), ("encoder", E), ("discriminator", D)):
        cfg = getattr(net, "cfg", None)
        if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
            out[name] = dataclasses.asdict(cfg)
    return out


def export_bundle(
    G: nn.Module,
    E: nn.Module | None,
    D: nn.Module,
    *,
    out: str | os.PathLike[str],
    spaces: Sequence[str] = SPACES,
    batches: Sequence[int] = (1, 4, 8),
    opset: int = 18,
    data_root: str | os.PathLike[str] | None = None,
    types: Sequence[str] | None = None,
    configs: dict[str, Any] | None = None,
    verify: bool = True,
    zip_: bool = False,
    bank_per_type: int = 6,
    bounds: Bounds | None = None,
    run_defaults: dict[str, Any] | None = None,
    patch: PatchInfo | None = None,
    held_in: dict[str, list[str]] | None = None,
) -> Path:
    """Export encoder, mapping, synthesis and step graphs plus defect bank and manifest as one bundle.

    Args:
        G: generator (its `w_avg` rows are the types), E: encoder (None: no encoder graph, the bundle starts
            from `w_avg` and λ_dom = 0), D: discriminator (trunk = perceptual F).
        out: bundle folder to write (replaced atomically if it already holds a bundle).
        spaces: latent spaces with synthesis + step graphs.
        batches: fixed batch sizes of the step graphs.
        opset: ONNX opset (>= 18).
        data_root: MVTec-layout dataset for the defect bank and real-input parity (None: no bank).
        types: type names in id order, "good" first (default: "good", "type1", ...).
        configs: model/training configs stored in the manifest (default: the nets' config dataclasses).
        verify: run the parity check (ORT vs torch, finite differences) and fail on violated bounds.
        zip_: also write `OUT.zip`.
        bank_per_type: defect crops per type in the bank.
        bounds: parity bounds (default `Bounds()`).
        run_defaults: overrides of the manifest's recommended `defectgen run` settings (`steps`, `guide_weight`):
            the model's trainer knows how many steps its encoder needs and whether its G can draw defects.
        patch: window and pixel scale of a patch-mode bundle (G must be layered, `export/patch.py`).
        held_in: type -> the defective file names the bank and the real parity inputs may use (a patch run's).

    Returns:
        The bundle folder.

    Raises:
        DefectgenError: bad request (space, batch, opset, types), an `out` that is not a bundle, or a failed
            parity check (`VerifyError`); nothing is left at `out` then (an older bundle stays as it was).
    """
    t_start = time.perf_counter()
    spaces, batches = list(spaces), sorted(int(b) for b in batches)
    _check_request(spaces, batches, opset)
    dims = model_dims(G)
    types = list(types) if types is not None else ["good"] + [f"type{i}" for i in range(1, dims.num_types)]
    _check_nets(G, E, dims, types, patch)
    out = Path(out)
    tmp = _prepare_out(out)
    try:
        bank = {}  # first: a bad dataset fails in seconds, not after minutes of tracing
        if data_root is not None:
            max_side = None if patch is not None else 2 * dims.resolution  # patch: the data's native scale
            bank = build_defect_bank(data_root, types, tmp, per_type=bank_per_type, max_side=max_side,
                                     held_in=held_in)
            log.info("defect bank: %s", ", ".join(f"{t} {len(v)}" for t, v in bank.items()) or "empty")
        else:
            log.warning("no dataset given: the bundle has no defect bank (the runtime then uses S = I)")
        if patch is not None:  # the training parts' size, for `run --scale auto`
            patch = with_part_size(patch, data_root)
        results = _export_graphs(G, E, D, dims, tmp, spaces, batches, opset)
        files = {g.path.name: _file_entry(g) for g in results}
        shared = share_weights(tmp, list(files))  # format 2: one weights file, each tensor once
        files[WEIGHTS_NAME] = FileEntry(role="weights")
        log.info("shared weights: %d tensors in %d graphs -> %d unique, %.2f MB (%.2f MB saved)", shared["tensors"],
                 len(results), shared["unique"], shared["bytes"] / 1e6, shared["saved"] / 1e6)
        if verify:
            real = _real_or_none(data_root, types, dims.resolution, patch, held_in)
            report = verify_graphs(G, E, D, results, dims, real=real, bounds=bounds)
            (tmp / VERIFY_NAME).write_text(report.to_json())
            report.raise_if_failed()
            files[VERIFY_NAME] = FileEntry(role="report")
            log.info("verify: passed (worst: %s)", ", ".join(f"{k} {v:.1e}" for k, v in report.worst.items()))
        manifest = _manifest(G, E, D, dims, types, spaces, batches, opset, files, bank, configs, results,
                             time.perf_counter() - t_start)
        manifest.patch = patch
        if E is None:  # nothing to start from but w_avg, and no domain term
            manifest.defaults = dataclasses.replace(manifest.defaults, init="wavg")
            manifest.default_lambdas["dom"] = 0.0
        manifest.defaults = dataclasses.replace(manifest.defaults, **(run_defaults or {}))
        finalize_manifest(tmp, manifest)
        _make_readable(tmp)
        Bundle.load(tmp)  # the runtime's own validation: shapes, checksums, I/O names
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if zip_:
        z = write_zip(out, out.parent / f"{out.name}.zip")
        log.info("wrote %s (%.2f MB)", z, z.stat().st_size / 1e6)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    log.info("wrote bundle %s: %d files, %.2f MB, %.1f s", out, len(manifest.files) + 1, total / 1e6,
             time.perf_counter() - t_start)
    return out


def _real_or_none(data_root: str | os.PathLike[str] | None, types: list[str], res: int, patch: PatchInfo | None,
                  held_in: dict[str, list[str]] | None) -> RealInputs | None:
    """Real inputs for the parity check, or None (random inputs only) when the dataset has no usable defects."""
    if data_root is None:
        return None
    try:
        return real_inputs(data_root, types, res, window_scale=patch.scale if patch is not None else None,
                           held_in=held_in)
    except DataError as e:
        log.warning("parity check on random inputs only: %s", e)
        return None


def _export_graphs(G: nn.Module, E: nn.Module | None, D: nn.Module, dims: ModelDims, folder: Path,
                   spaces: list[str], batches: list[int], opset: int) -> list[GraphResult]:
    todo = plan(spaces, batches, encoder=E is not None, critic=dims.layered)
    log.info("exporting %d graphs (res %d, spaces %s, step batches %s, opset %d)", len(todo), dims.resolution,
             ",".join(spaces), ",".join(map(str, batches)), opset)
    results = []
    for kind, space, batch, name in todo:
        results.append(export_graph(kind, G, E, D, dims=dims, path=folder / name, opset=opset, space=space,
                                    batch=batch))
        for extra in folder.glob(f"{name}.data"):  # only past the 2 GB protobuf limit
            log.warning("%s has external weights %s", name, extra.name)
    return results


def _manifest(G: nn.Module, E: nn.Module | None, D: nn.Module, dims: ModelDims, types: list[str], spaces: list[str],
              batches: list[int], opset: int, files: dict[str, FileEntry], bank: dict[str, list[dict[str, str]]],
              configs: dict[str, Any] | None, results: list[GraphResult], seconds: float) -> Manifest:
    from defectgen.export.objective import w_avg_table

    for g in results:
        data = g.path.parent / f"{g.path.name}.data"
        if data.is_file():
            files[data.name] = FileEntry(role="weights")
    table = w_avg_table(G).detach().cpu().double()
    export_info = {
        "seconds": round(seconds, 1),
        "tools": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                  "simplifier": "onnxsim" if onnx_tools.has_onnxsim() else "none",
                  "python": sys.version.split()[0]},
        "graphs": {g.path.name: {"nodes": g.nodes, "bytes": g.bytes, "seconds": round(g.seconds, 2), "ops": g.ops}
                   for g in results},
    }
    return Manifest(
        resolution=dims.resolution, z_dim=dims.z_dim, w_dim=dims.w_dim, num_ws=dims.num_ws,
        defect_types=types, spaces=spaces, step_batches=batches, opset=opset,
        default_lambdas=dict(DEFAULT_LAMBDAS),
        w_avg={t: table[i].tolist() for i, t in enumerate(types)},
        files=files,
        defaults=RunDefaults(space="wplus" if "wplus" in spaces else spaces[0]),
        defect_bank=bank,
        configs=configs if configs is not None else _net_configs(G, E, D),
        defectgen_version=__version__,
        extra={"export": export_info},
    )


# ---- CLI ---------------------------------------------------------------------------------------------------
def _progress_to_stderr() -> None:
    """Show the exporter's progress lines on stderr (once), without touching the root logger."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def check_run_defaults(steps: int | None, guide_weight: float | None, mask_mode: str | None = None,
                       mask_shape: str | None = None) -> dict[str, Any]:
    """The manifest's recommended run settings from `export --steps / --guide-weight / --mask-mode /
    --mask-shape` (None: not set).

    Raises:
        BundleError: steps < 1, a guide weight outside [0, 1], an unknown mask mode or mask shape.
    """
    run_defaults: dict[str, Any] = {}
    if steps is not None:
        if steps < 1:
            msg = f"--steps must be >= 1, got {steps}"
            raise BundleError(msg)
        run_defaults["steps"] = steps
    if guide_weight is not None:
        if not 0.0 <= guide_weight <= 1.0:
            msg = f"--guide-weight must be within [0, 1], got {guide_weight}"
            raise BundleError(msg)
        run_defaults["guide_weight"] = guide_weight
    if mask_mode is not None:
        if mask_mode not in MASK_MODES:
            raise BundleError(choice_error("--mask-mode", mask_mode, MASK_MODES))
        run_defaults["mask_mode"] = mask_mode
    if mask_shape is not None:
        if mask_shape not in MASK_SHAPES:
            raise BundleError(choice_error("--mask-shape", mask_shape, MASK_SHAPES))
        run_defaults["mask_shape"] = mask_shape
    return run_defaults


def export_bundle_cli(*, gan: Path, encoder: Path, out: Path, data: Path | None, spaces: list[str] | None,
                      batch: list[int], opset: int, verify: bool, zip_: bool, steps: int | None = None,
                      guide_weight: float | None = None, mask_mode: str | None = None,
                      mask_shape: str | None = None) -> Path:
    """`defectgen export`: load the checkpoints, then `export_bundle`.

    Args:
        gan: GAN run folder or checkpoint (G_ema and D are used).
        encoder: encoder run folder or checkpoint.
        out: bundle folder to write.
        data: dataset for the defect bank and real-input parity (default: the one the GAN trained on).
        spaces: latent spaces (default all).
        batch: step batch sizes (default 1, 4, 8).
        opset: ONNX opset.
        verify: run the parity check.
        zip_: also write `OUT.zip`.
        steps, guide_weight, mask_mode, mask_shape: the bundle's recommended `defectgen run --steps /
            --guide-weight / --mask-mode / --mask-shape` (None: 10 / 0 / target / reference).

    Returns:
        The bundle folder.

    Raises:
        DefectgenError: unreadable checkpoints, mismatched encoder, bad options, failed verification.
    """
    run_defaults = check_run_defaults(steps, guide_weight, mask_mode, mask_shape)
    from defectgen.training.checkpoint import (
        defect_types,
        load_discriminator,
        load_encoder,
        load_generator,
        read_checkpoint,
    )

    _progress_to_stderr()
    G, D, E = load_generator(gan), load_discriminator(gan), load_encoder(encoder)
    gan_ck, enc_ck = read_checkpoint(gan), read_checkpoint(encoder)
    types = defect_types(gan)
    enc_types = enc_ck.meta.get("defect_types")
    if enc_types is not None and list(enc_types) != types:
        msg = f"encoder {encoder} was trained with types {enc_types}, the GAN {gan} with {types}"
        raise BundleError(msg)
    configs = {**gan_ck.configs, **{k: v for k, v in enc_ck.configs.items() if k not in gan_ck.configs}}
    if data is None:
        trained_on = configs.get("train_gan", {}).get("data")
        if trained_on and Path(trained_on).is_dir():
            data = Path(trained_on)
            log.info("defect bank and real-input parity from the GAN's training data %s", data)
        else:
            log.warning("the GAN's training data %r is not here; pass --data for a defect bank", trained_on)
    return export_bundle(G, E, D, out=out, spaces=spaces or list(SPACES), batches=batch or [1, 4, 8],
                         opset=opset, data_root=data, types=types, configs=configs, verify=verify, zip_=zip_,
                         run_defaults=run_defaults)
