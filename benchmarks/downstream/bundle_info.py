"""Which bundle scores the defectgen rows, and whether that row is fair.

A fair row needs a bundle trained only on `train/good` + the held-in defects of this protocol's split. The
benchmark cannot check that from the ONNX files, so the bundle carries a small **provenance file** written by
whoever trained it:

- folder bundle `B/`: `B/provenance.json`; zip bundle `B.zip`: `B.provenance.json` next to it;
- keys: `trained_on` (what the GAN and encoder saw, e.g. "train/good + held-in third of make-data --res 128
  --n-defect 18 --seed 1"), `train_command` (the commands, one string), `train_seconds` (wall time, number);
  optional `held_in` ({type: [defect image file names]}, what the trainer saw, e.g. the trainer's own
  `held_in.json`): checked against this run's split, and a file the split holds out makes the row not fair.

With a provenance file whose `trained_on` is set, the row is recorded as fair; without one the three fields are
null and the row is labelled "not fair".

Without `--bundle` the rows use the embedded default bundle (also when given as a copy: it is recognised by its
manifest's hash). Its model was trained on the held-in third, and its provenance is committed here as
`default_bundle.provenance.json`, bound to the manifest's sha256: a re-export of the default bundle (new
manifest) no longer matches it and is refused until that file is updated, unless `--allow-default-bundle` is
given for a smoke run, whose row is then "not fair".

The manifest is read as JSON (its format is `docs/bundle.md`), so nothing here depends on the runtime's modules.
"""

from __future__ import annotations

import hashlib
import json
import sys
import zipfile
from pathlib import Path
from typing import Any, NoReturn

import defectgen

MANIFEST = "manifest.json"
PROVENANCE = "provenance.json"
PROVENANCE_KEYS = ("trained_on", "train_command", "train_seconds")
DEFAULT_PROVENANCE = Path(__file__).resolve().with_name("default_bundle.provenance.json")


def fail(msg: str) -> NoReturn:
    """One line on stderr and exit code 2 (the project's convention for errors the user can fix)."""
    print(f"downstream.py: error: {msg}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def default_bundle_path() -> Path:
    return Path(defectgen.__file__).resolve().parent / "assets" / "default_bundle"


def manifest_bytes(path: Path) -> bytes:
    """The raw manifest of a folder or zip bundle."""
    if path.is_dir():
        return (path / MANIFEST).read_bytes()
    with zipfile.ZipFile(path) as zf:
        return zf.read(MANIFEST)


def read_manifest(path: Path) -> dict[str, Any]:
    return json.loads(manifest_bytes(path).decode("utf-8"))


def manifest_sha(path: Path) -> str:
    return hashlib.sha256(manifest_bytes(path)).hexdigest()[:16]


def is_default(path: Path) -> bool:
    """True for the shipped default bundle or a byte-identical copy of its manifest."""
    default = default_bundle_path()
    if path.resolve() == default:
        return True
    return (default / MANIFEST).is_file() and manifest_sha(path) == manifest_sha(default)


def provenance_path(path: Path) -> Path:
    return path / PROVENANCE if path.is_dir() else path.with_suffix(".provenance.json")


def _read_json(p: Path) -> dict[str, Any]:
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        fail(f"{p}: not a readable JSON file ({e})")
    if not isinstance(data, dict):
        fail(f"{p}: expected a JSON object with {', '.join(PROVENANCE_KEYS)}")
    return data


def default_provenance() -> dict[str, Any] | None:
    """The committed provenance of the embedded default bundle; None when its manifest is not the one described."""
    manifest = default_bundle_path() / MANIFEST
    if not (DEFAULT_PROVENANCE.is_file() and manifest.is_file()):
        return None
    data = _read_json(DEFAULT_PROVENANCE)
    return data if data.get("manifest_sha256") == hashlib.sha256(manifest.read_bytes()).hexdigest() else None


def _provenance_data(path: Path) -> dict[str, Any] | None:
    """The whole provenance record of a bundle (the committed one for the default bundle), or None."""
    if is_default(path):
        return default_provenance()
    p = provenance_path(path)
    return _read_json(p) if p.is_file() else None


def read_provenance(path: Path) -> dict[str, Any] | None:
    """The provenance's three keys (missing keys -> None), or None without a provenance record."""
    data = _provenance_data(path)
    return None if data is None else {k: data.get(k) for k in PROVENANCE_KEYS}


def check_bundle(path: Path | None, *, allow_default: bool, train_budget: float) -> Path | None:
    """The bundle to use (None: train one with `--train-budget`; no `--bundle`: the embedded default bundle).

    Refuses a default bundle that its committed provenance no longer describes, unless `allow_default`.
    """
    if path is None and train_budget > 0:
        return None
    path = default_bundle_path() if path is None else path
    if not (path.is_dir() and (path / MANIFEST).is_file()) and not zipfile.is_zipfile(path):
        fail(f"--bundle {path}: not a bundle folder with {MANIFEST} nor a bundle zip")
    if is_default(path) and default_provenance() is None and not allow_default:
        fail(f"{path} is the embedded default bundle, but {DEFAULT_PROVENANCE.name} does not describe this export "
             f"of it (manifest sha256 differs): update that file, pass --bundle PATH, or --allow-default-bundle "
             f"for a smoke run (not fair)")
    return path


def describe(path: Path, *, how: str) -> dict[str, Any]:
    """The `protocol.defectgen_bundle` record: path, provenance, fairness and the bundle's run settings."""
    man = read_manifest(path)
    default = is_default(path)
    prov = read_provenance(path) or dict.fromkeys(PROVENANCE_KEYS)
    fair = bool(prov["trained_on"])
    why = ("" if fair else f"the embedded default bundle, which {DEFAULT_PROVENANCE.name} does not describe"
           if default else f"no {PROVENANCE} with `trained_on` beside the bundle")
    return {"path": str(path), **prov, "fair": fair, "not_fair_because": why or None, "how": how,
            "default_bundle": default, "manifest_sha256": manifest_sha(path), "resolution": man.get("resolution"),
            "defect_types": man.get("defect_types"), "run_defaults": effective_defaults(man)}


def effective_defaults(man: dict[str, Any]) -> dict[str, Any]:
    """The run settings the bundle gets: its manifest's `defaults` with the fields it does not name filled in."""
    from defectgen.runtime.bundle.sections import RunDefaults

    return RunDefaults.from_dict(man.get("defaults", {})).to_dict()


def write_provenance(bundle: Path, *, trained_on: str, train_command: str, train_seconds: float) -> Path:
    """Write the provenance file of a bundle trained here (the `--train-budget` path)."""
    p = provenance_path(bundle)
    p.write_text(json.dumps({"trained_on": trained_on, "train_command": train_command,
                             "train_seconds": round(train_seconds, 1)}, indent=2) + "\n", encoding="utf-8")
    return p


def unused() -> dict[str, Any]:
    """The record when no defectgen row is run."""
    return {"path": None, **dict.fromkeys(PROVENANCE_KEYS), "fair": None, "how": "not used"}


def check_held_in(record: dict[str, Any], held_in: dict[str, list[str]]) -> dict[str, Any]:
    """Compare the provenance's optional `held_in` lists with the split's held-in names; updates `record`.

    A bundle whose trainer saw a defect this split holds out would be scored on what it was trained on.
    """
    data = _provenance_data(Path(record["path"])) if record.get("path") else None
    listed = data.get("held_in") if data else None
    if not isinstance(listed, dict):
        record["held_in_checked"] = False
        return record
    extra = sorted(f"{t}/{n}" for t, names in listed.items() for n in names if n not in set(held_in.get(t, [])))
    record["held_in_checked"] = True
    if extra:
        record["fair"] = False
        record["not_fair_because"] = (f"its provenance lists {len(extra)} defect(s) this split does not hold in "
                                      f"(e.g. {', '.join(extra[:3])})")
    return record
