"""Typed reads of manifest fields: each helper names the bad field in its `BundleError`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from defectgen.errors import BundleError

_MISSING = object()
_TYPE_NAMES = {int: "an int", float: "a number", str: "a string", list: "a list", dict: "an object"}


def require_type(value: Any, typ: type, where: str) -> None:
    ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
    if typ is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
        msg = f"manifest field {where} must be {_TYPE_NAMES.get(typ, typ.__name__)}, got {type(value).__name__}"
        raise BundleError(msg)


def get_field(d: dict[str, Any], key: str, typ: type, where: str, default: Any = _MISSING) -> Any:
    name = key if where == "manifest" else f"{where}.{key}"
    if key not in d or d[key] is None:
        if default is not _MISSING:
            return default
        msg = f"manifest is missing required field {name}"
        raise BundleError(msg)
    require_type(d[key], typ, name)
    return d[key]


def str_list(d: dict[str, Any], key: str) -> list[str]:
    values = get_field(d, key, list, "manifest")
    for i, v in enumerate(values):
        require_type(v, str, f"{key}[{i}]")
    return list(values)


def int_list(d: dict[str, Any], key: str) -> list[int]:
    values = get_field(d, key, list, "manifest")
    for i, v in enumerate(values):
        require_type(v, int, f"{key}[{i}]")
    return list(values)


def float_dict(d: dict[str, Any], key: str) -> dict[str, float]:
    values = get_field(d, key, dict, "manifest")
    for k, v in values.items():
        require_type(v, float, f"{key}[{k!r}]")
    return {k: float(v) for k, v in values.items()}


def w_avg_field(d: dict[str, Any]) -> dict[str, list[float]]:
    values = get_field(d, "w_avg", dict, "manifest")
    out = {}
    for k, v in values.items():
        require_type(v, list, f"w_avg[{k!r}]")
        for i, x in enumerate(v):
            require_type(x, float, f"w_avg[{k!r}][{i}]")
        out[k] = [float(x) for x in v]
    return out


def bank_field(d: dict[str, Any]) -> dict[str, list[dict[str, str]]]:
    bank = get_field(d, "defect_bank", dict, "manifest", default={})
    for t, items in bank.items():
        require_type(items, list, f"defect_bank[{t!r}]")
        for i, it in enumerate(items):
            where = f"defect_bank[{t!r}][{i}]"
            require_type(it, dict, where)
            get_field(it, "image", str, where)
            get_field(it, "mask", str, where)
    return bank


def check_relpath(rel: str) -> str:
    """File keys are relative posix paths inside the bundle: no absolute paths, no `..` (zip-slip, tampering)."""
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts or "\\" in rel or not rel:
        msg = f"manifest lists file {rel!r}: file paths must be relative and stay inside the bundle"
        raise BundleError(msg)
    return rel
