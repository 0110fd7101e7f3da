"""The bundle manifest schema (docs/bundle.md): one definition shared by the exporter and the runtime.

Torch-free on purpose: `defectgen export` builds a `Manifest`, lists its files, then calls `finalize_manifest`
to hash them and write `manifest.json`; `defectgen.runtime.bundle` reads it back with `Manifest.from_dict`,
which checks every field's presence and type and names the bad one. `Manifest.expected_io` is the single
statement of what each graph's inputs and outputs must look like for a given resolution and latent size.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from defectgen import __version__
from defectgen.data.imageio import atomic_write_bytes
from defectgen.errors import BundleError
from defectgen.runtime.bundle.fields import (
    bank_field,
    check_relpath,
    float_dict,
    get_field,
    int_list,
    require_type,
    str_list,
    w_avg_field,
)
from defectgen.runtime.bundle.sections import PatchInfo, RunDefaults

FORMAT = "defectgen-bundle"
FORMAT_VERSION = 2  # 2: graphs may keep their weights in a shared external-data file (role "weights")
READ_VERSIONS = (1, 2)  # 1: every graph embeds its own weights; the layout is otherwise the same
LOSS_TERMS = ("mask", "bg", "def", "pix", "dom", "prior")  # order of `terms` columns and of the `lambdas` input
SPACES = ("wplus", "w", "z")
# "weights": an ONNX external-data file (listed so its checksum is verified); "report": verify.json
# "critic": D's realness score, optional (a patch bundle ranks G's target proposals with it)
ROLES = ("encoder", "mapping", "synthesis", "step", "critic", "bank", "weights", "report", "other")
GRAPH_ROLES = ("encoder", "mapping", "synthesis", "step", "critic")
MANIFEST_NAME = "manifest.json"

Dim = int | str  # a fixed size, or the name of a symbolic dimension ("B")


@dataclass
class TensorSpec:
    """One graph input or output as the manifest declares it."""

    name: str
    shape: list[Dim]  # ints for fixed dims, a string (e.g. "B") for a symbolic dim
    dtype: str = "float32"

    @classmethod
    def from_dict(cls, d: Any, where: str) -> TensorSpec:
        """Parse `{"name", "shape", "dtype"}`; `where` names the field in error messages."""
        require_type(d, dict, where)
        name = get_field(d, "name", str, where)
        shape = get_field(d, "shape", list, where)
        for i, s in enumerate(shape):
            if isinstance(s, bool) or not isinstance(s, (int, str)):
                msg = f"manifest field {where}.shape[{i}] must be an int or a dimension name, got {s!r}"
                raise BundleError(msg)
        dtype = get_field(d, "dtype", str, where, default="float32")
        return cls(name=name, shape=list(shape), dtype=dtype)


@dataclass
class FileEntry:
    """A file of the bundle: its checksum and, for graphs, its role and declared I/O.

    `sha256`/`bytes` are filled in by `finalize_manifest`; `space` is set for synthesis and step graphs,
    `batch` (the fixed batch size) for step graphs only.
    """

    role: str
    sha256: str = ""
    bytes: int = 0
    space: str | None = None
    batch: int | None = None
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)

    def __post_init__(self) -> None:
        # the exporter may pass I/O as {"name", "shape", "dtype"} dicts (e.g. from its io_signature helper)
        self.inputs = [TensorSpec.from_dict(t, f"inputs[{i}]") if isinstance(t, dict) else t
                       for i, t in enumerate(self.inputs)]
        self.outputs = [TensorSpec.from_dict(t, f"outputs[{i}]") if isinstance(t, dict) else t
                        for i, t in enumerate(self.outputs)]

    @classmethod
    def from_dict(cls, d: Any, where: str) -> FileEntry:
        """Parse one `files` entry; `where` names it in error messages."""
        require_type(d, dict, where)
        role = get_field(d, "role", str, where)
        if role not in ROLES:
            msg = f"manifest field {where}.role is {role!r}; expected one of {', '.join(ROLES)}"
            raise BundleError(msg)
        entry = cls(
            role=role,
            sha256=get_field(d, "sha256", str, where),
            bytes=get_field(d, "bytes", int, where),
            space=get_field(d, "space", str, where, default=None),
            batch=get_field(d, "batch", int, where, default=None),
            inputs=[TensorSpec.from_dict(t, f"{where}.inputs[{i}]")
                    for i, t in enumerate(get_field(d, "inputs", list, where, default=[]))],
            outputs=[TensorSpec.from_dict(t, f"{where}.outputs[{i}]")
                     for i, t in enumerate(get_field(d, "outputs", list, where, default=[]))],
        )
        if role in ("synthesis", "step") and entry.space not in SPACES:
            msg = f"manifest field {where}.space is {entry.space!r}; expected one of {', '.join(SPACES)}"
            raise BundleError(msg)
        if role == "step" and (entry.batch is None or entry.batch < 1):
            msg = f"manifest field {where}.batch must be a positive int for a step graph, got {entry.batch!r}"
            raise BundleError(msg)
        return entry

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; `None` fields and empty I/O lists are left out."""
        d = asdict(self)
        return {k: v for k, v in d.items() if v is not None and not (k in ("inputs", "outputs") and not v)}


@dataclass
class Manifest:
    """`manifest.json` of a bundle, field for field as in docs/bundle.md.

    Unknown top-level keys from a newer exporter of the same format version are kept in `extra` and written
    back by `to_json`, so reading and re-writing a manifest never loses information.
    """

    resolution: int  # R: images are (B, 3, R, R)
    z_dim: int  # Z
    w_dim: int  # W
    num_ws: int  # L: layers of w+
    defect_types: list[str]  # in type-id order; [0] == "good"
    spaces: list[str]  # latent spaces with synthesis + step graphs
    step_batches: list[int]  # fixed batch sizes of the step graphs
    opset: int
    default_lambdas: dict[str, float]  # one weight per LOSS_TERMS name
    w_avg: dict[str, list[float]]  # per defect type, W floats
    files: dict[str, FileEntry]  # relative posix path -> entry
    defaults: RunDefaults = field(default_factory=RunDefaults)  # recommended `defectgen run` settings
    patch: PatchInfo | None = None  # set for patch-mode bundles (window + pixel scale); None: whole-part
    defect_bank: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # type -> [{"image", "mask"}]
    configs: dict[str, Any] = field(default_factory=dict)  # training/model configs, informational
    loss_terms: list[str] = field(default_factory=lambda: list(LOSS_TERMS))
    defectgen_version: str = ""
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.defaults, dict):  # the exporter and tests may pass the JSON form
            self.defaults = RunDefaults.from_dict(self.defaults)
        if isinstance(self.patch, dict):
            self.patch = PatchInfo.from_dict(self.patch)

    # ---- (de)serialisation -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict in the documented key order."""
        d: dict[str, Any] = {
            "format": self.format,
            "format_version": self.format_version,
            "defectgen_version": self.defectgen_version,
            "resolution": self.resolution,
            "z_dim": self.z_dim,
            "w_dim": self.w_dim,
            "num_ws": self.num_ws,
            "defect_types": list(self.defect_types),
            "spaces": list(self.spaces),
            "step_batches": list(self.step_batches),
            "opset": self.opset,
            "loss_terms": list(self.loss_terms),
            "default_lambdas": dict(self.default_lambdas),
            "defaults": self.defaults.to_dict(),
            **({"patch": self.patch.to_dict()} if self.patch is not None else {}),
            "w_avg": {k: [float(x) for x in v] for k, v in self.w_avg.items()},
            "files": {k: v.to_dict() for k, v in sorted(self.files.items())},
            "defect_bank": self.defect_bank,
            "configs": self.configs,
        }
        d.update(self.extra)
        return d

    def to_json(self) -> str:
        """The manifest as indented JSON text (what `manifest.json` holds)."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, d: Any) -> Manifest:
        """Build and validate a manifest from parsed JSON.

        Args:
            d: the parsed `manifest.json`.

        Returns:
            The manifest.

        Raises:
            BundleError: wrong `format`/`format_version`, a missing field, a field of the wrong type, or
                inconsistent values; the message names the field.
        """
        require_type(d, dict, "manifest")
        fmt = d.get("format")
        if fmt != FORMAT:
            msg = f"not a defectgen bundle: manifest field format is {fmt!r}, expected {FORMAT!r}"
            raise BundleError(msg)
        version = d.get("format_version")
        if version not in READ_VERSIONS:
            msg = (f"unsupported bundle format_version {version!r}: this runtime (defectgen {__version__}) reads "
                   f"versions {', '.join(map(str, READ_VERSIONS))}; re-export the bundle with a matching defectgen")
            raise BundleError(msg)
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        m = cls(
            resolution=get_field(d, "resolution", int, "manifest"),
            z_dim=get_field(d, "z_dim", int, "manifest"),
            w_dim=get_field(d, "w_dim", int, "manifest"),
            num_ws=get_field(d, "num_ws", int, "manifest"),
            defect_types=str_list(d, "defect_types"),
            spaces=str_list(d, "spaces"),
            step_batches=int_list(d, "step_batches"),
            opset=get_field(d, "opset", int, "manifest"),
            loss_terms=str_list(d, "loss_terms"),
            default_lambdas=float_dict(d, "default_lambdas"),
            defaults=RunDefaults.from_dict(get_field(d, "defaults", dict, "manifest", default={})),
            patch=PatchInfo.from_dict(d["patch"]) if d.get("patch") is not None else None,
            w_avg=w_avg_field(d),
            files={check_relpath(k): FileEntry.from_dict(v, f"files[{k!r}]")
                   for k, v in get_field(d, "files", dict, "manifest").items()},
            defect_bank=bank_field(d),
            configs=get_field(d, "configs", dict, "manifest", default={}),
            defectgen_version=get_field(d, "defectgen_version", str, "manifest", default=""),
            format_version=version,
            extra={k: v for k, v in d.items() if k not in known},
        )
        m.validate()
        return m

    # ---- consistency -------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check the values agree with each other (not with files on disk: that is `Bundle.load`'s job).

        Raises:
            BundleError: naming the first inconsistent field.
        """
        for name in ("resolution", "z_dim", "w_dim", "num_ws", "opset"):
            if getattr(self, name) < 1:
                msg = f"manifest field {name} must be positive, got {getattr(self, name)}"
                raise BundleError(msg)
        if not self.defect_types or self.defect_types[0] != "good":
            msg = f"manifest field defect_types must start with 'good', got {self.defect_types}"
            raise BundleError(msg)
        if len(set(self.defect_types)) != len(self.defect_types):
            msg = f"manifest field defect_types has duplicates: {self.defect_types}"
            raise BundleError(msg)
        if tuple(self.loss_terms) != LOSS_TERMS:
            msg = f"manifest field loss_terms is {self.loss_terms}; format version 1 needs {list(LOSS_TERMS)}"
            raise BundleError(msg)
        bad = [s for s in self.spaces if s not in SPACES]
        if bad or not self.spaces:
            msg = f"manifest field spaces is {self.spaces}; each must be one of {', '.join(SPACES)}"
            raise BundleError(msg)
        if not self.step_batches or any(b < 1 for b in self.step_batches):
            msg = f"manifest field step_batches must list positive batch sizes, got {self.step_batches}"
            raise BundleError(msg)
        if self.patch is not None and self.patch.window != self.resolution:
            msg = f"manifest field patch.window is {self.patch.window}, but resolution is {self.resolution}"
            raise BundleError(msg)
        self._validate_values()

    def _validate_values(self) -> None:
        if set(self.default_lambdas) != set(LOSS_TERMS):
            msg = (f"manifest field default_lambdas must have exactly the keys {list(LOSS_TERMS)}, "
                   f"got {sorted(self.default_lambdas)}")
            raise BundleError(msg)
        for t in self.defect_types:
            if t not in self.w_avg:
                msg = f"manifest field w_avg has no entry for defect type {t!r}"
                raise BundleError(msg)
            if len(self.w_avg[t]) != self.w_dim:
                msg = f"manifest field w_avg[{t!r}] has {len(self.w_avg[t])} values, expected w_dim={self.w_dim}"
                raise BundleError(msg)
        for t, items in self.defect_bank.items():
            if t not in self.defect_types:
                msg = f"manifest field defect_bank has unknown defect type {t!r}; types are {self.defect_types}"
                raise BundleError(msg)
            for it in items:
                for p in (it["image"], it["mask"]):
                    if p not in self.files:
                        msg = f"manifest field defect_bank[{t!r}] names {p!r}, which is not listed in files"
                        raise BundleError(msg)

    def graph_files(self, role: str, space: str | None = None) -> dict[str, FileEntry]:
        """Files of one graph role (and space), e.g. `graph_files("step", "wplus")`."""
        return {k: v for k, v in self.files.items() if v.role == role and (space is None or v.space == space)}

    def expected_io(self, role: str, space: str | None = None,
                    batch: Dim = "B") -> tuple[list[TensorSpec], list[TensorSpec]]:
        """The inputs and outputs a graph of this role must have (docs/bundle.md "Files").

        Args:
            role: `encoder`, `mapping`, `synthesis`, `step` or `critic`.
            space: latent space, for `synthesis` and `step`.
            batch: the batch dimension: a name for symbolic graphs, the fixed size for step graphs.

        Returns:
            `(inputs, outputs)`; a string dim matches any symbolic dimension name.

        Raises:
            BundleError: unknown role or space.
        """
        r, b = self.resolution, batch
        img = TensorSpec("image", [b, 3, r, r])
        msk = TensorSpec("mask", [b, 1, r, r])
        onehot = TensorSpec("type_onehot", [b, len(self.defect_types)])
        latent = {"wplus": [b, self.num_ws, self.w_dim], "w": [b, self.w_dim], "z": [b, self.z_dim]}
        if role == "encoder":
            return [img, msk], [TensorSpec("wplus", [b, self.num_ws, self.w_dim])]
        if role == "mapping":
            return [TensorSpec("z", [b, self.z_dim]), onehot], [TensorSpec("w", [b, self.w_dim])]
        if role == "critic":
            return [img, msk, onehot], [TensorSpec("score", [b, 1])]
        if space not in latent:
            msg = f"role {role!r} needs a latent space, one of {', '.join(SPACES)}; got {space!r}"
            raise BundleError(msg)
        lat = TensorSpec("latent", latent[space])
        extra = [onehot] if space == "z" else []
        if role == "synthesis":  # a patch G draws over the good window: it is an input too
            good = [TensorSpec("good", [b, 3, r, r])] if self.patch is not None else []
            return [lat, *good, *extra], [img, TensorSpec("mask_logit", [b, 1, r, r])]
        if role == "step":
            ins = [lat, TensorSpec("good", [b, 3, r, r]), msk, TensorSpec("stitched", [b, 3, r, r]),
                   TensorSpec("lambdas", [len(LOSS_TERMS)]), *extra]
            return ins, [TensorSpec("terms", [b, len(LOSS_TERMS)]), TensorSpec("grad", latent[space])]
        msg = f"no graph I/O is defined for role {role!r}"
        raise BundleError(msg)


def compare_io(rel: str, kind: str, got: list[TensorSpec], want: list[TensorSpec]) -> None:
    """I/O must match the expected names, order, shapes and dtypes; a named dim matches any named dim.

    Used on the manifest's declarations when a bundle loads, and on a graph's real I/O when a session opens.

    Raises:
        BundleError: naming the file, the tensor and both shapes.
    """
    got_names, want_names = [t.name for t in got], [t.name for t in want]
    if got_names != want_names:
        msg = f"bundle file {rel}: {kind} are {got_names}, expected {want_names}"
        raise BundleError(msg)
    for g, w in zip(got, want, strict=True):
        same = len(g.shape) == len(w.shape) and all(
            (isinstance(a, str) and isinstance(b, str)) or a == b for a, b in zip(g.shape, w.shape, strict=False))
        if not same or g.dtype != w.dtype:
            msg = (f"bundle file {rel}: {kind[:-1]} {g.name!r} is {g.dtype}{g.shape}, but the manifest's sizes "
                   f"imply {w.dtype}{w.shape}")
            raise BundleError(msg)


# ---- writing ---------------------------------------------------------------------------------------------
def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def finalize_manifest(bundle_dir: str | os.PathLike[str], manifest: Manifest) -> Path:
    """Hash every listed file, validate, and write `<bundle_dir>/manifest.json` atomically.

    Files named by `manifest.defect_bank` but not in `manifest.files` are added with role `bank`, so the
    exporter only has to list its graphs. `manifest` is updated in place (sha256, bytes).

    Args:
        bundle_dir: the bundle folder; file keys are paths relative to it.
        manifest: the manifest to complete.

    Returns:
        Path of the written `manifest.json`.

    Raises:
        BundleError: a listed file does not exist, or the manifest is inconsistent.
    """
    root = Path(bundle_dir)
    for items in manifest.defect_bank.values():
        for it in items:
            for p in (it["image"], it["mask"]):
                manifest.files.setdefault(p, FileEntry(role="bank"))
    for rel, entry in manifest.files.items():
        path = root / check_relpath(rel)
        if not path.is_file():
            msg = f"cannot finalize manifest: listed file {rel} does not exist in {root}"
            raise BundleError(msg)
        entry.sha256 = sha256_file(path)
        entry.bytes = path.stat().st_size
    manifest.validate()
    out = root / MANIFEST_NAME
    atomic_write_bytes(out, manifest.to_json().encode())
    return out
