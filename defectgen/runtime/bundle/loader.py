"""Load and validate an exported bundle (folder or .zip) and answer questions about it, without torch.

    bundle = Bundle.load("models/hazelnut_bundle")      # or .zip, or Bundle.load(default_bundle_path())
    bundle.step_file("wplus", 4)                        # -> Path of step_wplus_b4.onnx
    bundle.lambda_vector({"def": 0.5})                  # -> float32 (K,) in LOSS_TERMS order

`Bundle.load` refuses, with a one-line `BundleError` naming the file or field, a bundle whose format or version
differ, whose listed files are missing or do not match their sha256, or whose declared graph I/O does not match
the resolution and latent sizes in the manifest (docs/bundle.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from defectgen import ASSETS_DIR
from defectgen.errors import BundleError, choice_error
from defectgen.runtime.bundle.manifest import (
    GRAPH_ROLES,
    LOSS_TERMS,
    MANIFEST_NAME,
    FileEntry,
    Manifest,
    PatchInfo,
    RunDefaults,
    compare_io,
    sha256_file,
)


def default_bundle_path() -> Path:
    """Where the embedded default bundle lives in an install: `defectgen/assets/default_bundle`."""
    return ASSETS_DIR / "default_bundle"


def user_cache_dir() -> Path:
    """Per-user cache root (`$DEFECTGEN_CACHE`, else `$XDG_CACHE_HOME/defectgen`, else `~/.cache/defectgen`)."""
    if env := os.environ.get("DEFECTGEN_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "defectgen"


@dataclass
class Bundle:
    """A validated bundle on disk. Build it with `Bundle.load`.

    Attributes:
        root: the folder holding `manifest.json` (for a zip: its extraction folder).
        manifest: the parsed manifest.
        source: what was passed to `load` (the folder or the .zip).
    """

    root: Path
    manifest: Manifest
    source: Path

    # ---- loading -----------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, *, verify: bool = True) -> Bundle:
        """Open a bundle folder or `.zip` and validate it.

        Args:
            path: bundle folder, `.zip`, or a `manifest.json` inside a folder; None for the default bundle.
            verify: check every file's sha256 (on by default; hashing a small bundle takes milliseconds).

        Returns:
            The bundle.

        Raises:
            BundleError: missing path, not a bundle, wrong format/version, missing or tampered file
                (`checksum mismatch: <file> ...`), or graph I/O that disagrees with the manifest's sizes.
        """
        if path is None:
            path = default_bundle_path()
            if not (path / MANIFEST_NAME).is_file():
                msg = (f"the default bundle is not shipped in this install ({path} has no {MANIFEST_NAME}); "
                       f"pass --bundle with a folder or .zip written by `defectgen export`")
                raise BundleError(msg)
        source = Path(path)
        if source.name == MANIFEST_NAME and source.is_file():
            source = source.parent
        if not source.exists():
            msg = f"bundle {source} does not exist"
            raise BundleError(msg)
        root = _extract_zip(source) if source.is_file() else source
        manifest = _read_manifest(root)
        bundle = cls(root=root, manifest=manifest, source=source)
        bundle._check_files(verify=verify)
        bundle._check_graph_io()
        return bundle

    def _check_files(self, *, verify: bool) -> None:
        for rel, entry in self.manifest.files.items():
            path = self.root / rel
            if not path.is_file():
                msg = f"bundle {self.source}: listed file {rel} is missing"
                raise BundleError(msg)
            if not verify:
                continue
            size = path.stat().st_size
            if size != entry.bytes or sha256_file(path) != entry.sha256:
                msg = (f"checksum mismatch: {rel} in bundle {self.source} does not match its manifest entry "
                       f"(file changed or corrupted; re-export or re-copy the bundle)")
                raise BundleError(msg)

    def _check_graph_io(self) -> None:
        m = self.manifest
        # an encoder is optional where the bundle does not start from it (a patch G without a trained encoder)
        for role in ("encoder", "mapping") if m.defaults.init == "encoder" else ("mapping",):
            if not m.graph_files(role):
                msg = f"bundle {self.source}: manifest lists no {role} graph"
                raise BundleError(msg)
        for space in m.spaces:
            if not m.graph_files("synthesis", space):
                msg = f"bundle {self.source}: manifest lists no synthesis graph for space {space!r}"
                raise BundleError(msg)
            batches = sorted(e.batch for e in m.graph_files("step", space).values() if e.batch)
            if batches != sorted(m.step_batches):
                msg = (f"bundle {self.source}: step graphs for space {space!r} have batches {batches}, "
                       f"manifest step_batches says {sorted(m.step_batches)}")
                raise BundleError(msg)
        for rel, entry in m.files.items():
            if entry.role in GRAPH_ROLES:
                batch = entry.batch if entry.role == "step" else "B"
                want_in, want_out = m.expected_io(entry.role, entry.space, batch if batch is not None else "B")
                compare_io(rel, "inputs", entry.inputs, want_in)
                compare_io(rel, "outputs", entry.outputs, want_out)

    @property
    def has_encoder(self) -> bool:
        return bool(self.manifest.graph_files("encoder"))

    @property
    def patch_design(self) -> str | None:
        """None for a whole-part bundle; a patch G's design, "layered" (a defect layer) or "full" (the window)."""
        patch = self.manifest.patch
        return None if patch is None else patch.design

    @property
    def has_critic(self) -> bool:
        """The bundle has D's realness score (`critic.onnx`), which ranks G's target proposals."""
        return bool(self.manifest.graph_files("critic"))

    @property
    def patch(self) -> PatchInfo | None:
        """Window and pixel scale of a patch-mode bundle (None: the model sees whole parts)."""
        return self.manifest.patch

    # ---- sizes -------------------------------------------------------------------------------------------
    @property
    def resolution(self) -> int:
        return self.manifest.resolution

    @property
    def z_dim(self) -> int:
        return self.manifest.z_dim

    @property
    def w_dim(self) -> int:
        return self.manifest.w_dim

    @property
    def num_ws(self) -> int:
        return self.manifest.num_ws

    @property
    def defect_types(self) -> list[str]:
        return list(self.manifest.defect_types)

    @property
    def spaces(self) -> list[str]:
        return list(self.manifest.spaces)

    @property
    def defaults(self) -> RunDefaults:
        """The exporter-recommended `defectgen run` settings."""
        return self.manifest.defaults

    @property
    def default_lambdas(self) -> dict[str, float]:
        return dict(self.manifest.default_lambdas)

    def latent_shape(self, space: str) -> tuple[int, ...]:
        """Per-sample latent shape: `(L, W)` for wplus, `(W,)` for w, `(Z,)` for z."""
        self.check_space(space)
        return {"wplus": (self.num_ws, self.w_dim), "w": (self.w_dim,), "z": (self.z_dim,)}[space]

    # ---- files -------------------------------------------------------------------------------------------
    def path_of(self, file: str) -> Path:
        """Absolute path of a file listed in the manifest.

        Raises:
            BundleError: the file is not listed.
        """
        if file not in self.manifest.files:
            raise BundleError(choice_error("bundle file", file, sorted(self.manifest.files)))
        return self.root / file

    def entry(self, file: str) -> FileEntry:
        """The manifest entry of a listed file (sha256, role, declared I/O)."""
        self.path_of(file)
        return self.manifest.files[file]

    def graph_file(self, role: str, space: str | None = None) -> str:
        """Relative name of the encoder / mapping / synthesis / critic graph (for synthesis: of `space`).

        Raises:
            BundleError: no such graph in this bundle.
        """
        if space is not None:
            self.check_space(space)
        files = self.manifest.graph_files(role, space)
        if not files:
            msg = f"bundle {self.source} has no {role} graph" + (f" for space {space!r}" if space else "")
            raise BundleError(msg)
        return sorted(files)[0]

    def check_space(self, space: str) -> None:
        """Raise `BundleError` (with a suggestion) if the bundle has no graphs for `space`."""
        if space not in self.manifest.spaces:
            raise BundleError(choice_error("latent space", space, self.manifest.spaces))

    def step_batches(self, space: str) -> list[int]:
        """Sorted fixed batch sizes of the step graphs exported for `space`."""
        self.check_space(space)
        return sorted(e.batch for e in self.manifest.graph_files("step", space).values() if e.batch)

    def step_file(self, space: str, batch: int) -> str:
        """Relative name of the step graph for `space` with fixed batch `batch`.

        Raises:
            BundleError: unknown space, or no step graph of that batch size.
        """
        for rel, e in self.manifest.graph_files("step", space).items():
            if e.batch == batch:
                return rel
        msg = f"bundle {self.source} has no step graph for space {space!r} with batch {batch}; " \
              f"exported batches: {self.step_batches(space)}"
        raise BundleError(msg)

    # ---- values ------------------------------------------------------------------------------------------
    def lambda_vector(self, overrides: dict[str, float] | None = None) -> np.ndarray:
        """Loss weights as the step graph's `lambdas` input: float32 (K,) in `LOSS_TERMS` order.

        Args:
            overrides: `{term: weight}` replacing the bundle's defaults.

        Raises:
            BundleError: unknown term name (with the closest match), or a negative / non-finite weight.
        """
        lam = self.default_lambdas
        for name, value in (overrides or {}).items():
            if name not in lam:
                raise BundleError(choice_error("loss term", name, LOSS_TERMS))
            v = float(value)
            if not np.isfinite(v) or v < 0:
                msg = f"loss weight {name}={value} must be a finite number >= 0"
                raise BundleError(msg)
            lam[name] = v
        return np.array([lam[t] for t in LOSS_TERMS], dtype=np.float32)

    def type_index(self, type_: str) -> int:
        """Type id of a defect type name (0 is "good").

        Raises:
            BundleError: unknown type (with the closest match).
        """
        try:
            return self.manifest.defect_types.index(type_)
        except ValueError:
            raise BundleError(choice_error("defect type", type_, self.manifest.defect_types)) from None

    def type_onehot(self, types: list[str]) -> np.ndarray:
        """float32 (B, T) one-hot rows for defect type names, as the mapping / z graphs take them."""
        out = np.zeros((len(types), len(self.manifest.defect_types)), dtype=np.float32)
        for i, t in enumerate(types):
            out[i, self.type_index(t)] = 1.0
        return out

    def w_avg(self, type_: str) -> np.ndarray:
        """float32 (W,) average w of the mapping network for one defect type."""
        self.type_index(type_)
        return np.asarray(self.manifest.w_avg[type_], dtype=np.float32)

    def bank(self, type_: str) -> list[tuple[Path, Path]]:
        """Real defects of one type shipped for stitching: `[(image path, mask path), ...]` (may be empty)."""
        self.type_index(type_)
        return [(self.root / it["image"], self.root / it["mask"]) for it in self.manifest.defect_bank.get(type_, [])]

    # ---- caches ------------------------------------------------------------------------------------------
    def cache_dir(self, kind: str) -> Path:
        """The bundle's cache folder of one kind, e.g. `cache_dir("ort")` -> `<user cache>/bundles/<key>/ort/`.

        Caches never go beside the bundle: an installed package or a shared network folder may be read-only,
        and nobody expects files to appear there. The key is the manifest's hash, so an edited or re-exported
        bundle gets a fresh cache and two copies of the same bundle share one.
        """
        key = hashlib.sha256((self.root / MANIFEST_NAME).read_bytes()).hexdigest()[:16]
        folder = user_cache_dir() / "bundles" / key / kind
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            msg = (f"cannot create the cache folder {folder}: {e.strerror or e} "
                   f"(set DEFECTGEN_CACHE to a writable folder)")
            raise BundleError(msg) from None
        return folder


# ---- helpers ---------------------------------------------------------------------------------------------
def _read_manifest(root: Path) -> Manifest:
    path = root / MANIFEST_NAME
    if not path.is_file():
        msg = f"{root} is not a bundle: it has no {MANIFEST_NAME}"
        raise BundleError(msg)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        msg = f"{path} is not valid JSON: {e}"
        raise BundleError(msg) from None
    return Manifest.from_dict(data)


def _extract_zip(zpath: Path) -> Path:
    """Extract a zipped bundle once, into `<user cache>/zips/<sha256[:16]>/` (never beside the zip).

    Extraction goes to a temp folder that is renamed into place, so a crash or a concurrent loader never sees
    a half-extracted bundle. The manifest may sit at the zip's root or inside one top-level folder.
    """
    if not zipfile.is_zipfile(zpath):
        msg = f"bundle {zpath} is a file but not a .zip (pass the bundle folder or its .zip)"
        raise BundleError(msg)
    parent = user_cache_dir() / "zips"
    final = parent / sha256_file(zpath)[:16]
    try:
        parent.mkdir(parents=True, exist_ok=True)
        if not final.is_dir():
            _extract_into(zpath, parent, final)
    except PermissionError:
        msg = f"cannot extract bundle {zpath}: {parent} is not writable (set DEFECTGEN_CACHE to a writable folder)"
        raise BundleError(msg) from None
    return _bundle_root_in(final, zpath)


def _extract_into(zpath: Path, parent: Path, final: Path) -> None:
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=".tmp-"))
    try:
        with zipfile.ZipFile(zpath) as zf:
            for name in zf.namelist():
                p = Path(name)
                if p.is_absolute() or ".." in p.parts:
                    msg = f"bundle {zpath} has an unsafe member path {name!r}"
                    raise BundleError(msg)
            zf.extractall(tmp)
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.is_dir():  # not a lost race with another loader: a real error
                raise
    except zipfile.BadZipFile as e:
        msg = f"bundle {zpath} is a corrupt zip: {e}"
        raise BundleError(msg) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _bundle_root_in(folder: Path, zpath: Path) -> Path:
    if (folder / MANIFEST_NAME).is_file():
        return folder
    subdirs = [p for p in folder.iterdir() if p.is_dir()]
    if len(subdirs) == 1 and (subdirs[0] / MANIFEST_NAME).is_file():
        return subdirs[0]
    msg = f"bundle {zpath} has no {MANIFEST_NAME} at its root or in a single top-level folder"
    raise BundleError(msg)
