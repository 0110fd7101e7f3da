"""Which model a committed benchmark result was measured on, and whether that model is still the shipped one.

A result's JSON stamps the git commit it ran at (`machine.git.commit`) and the time (`machine.date_utc`), not a
hash of the bundle it timed, so the model is looked up in git: the shipped model is the last commit that changed
the embedded bundle (`defectgen/assets/default_bundle/`); a result whose commit already holds that change ran on
it, an older one ran on the bundle its commit held, named from that commit's manifest. A commit git does not know
(a rebased branch) falls back to the date. A result measured on an uncommitted bundle is credited to the committed
one before it, so commit a new bundle before measuring it.

Random-weight benchmark nets (`common.random_nets`: the whole-part StyleGAN G, E and D) are no shipped model at
all; results that time them name them (`/random<res>-` in a bundle or graph path).

    label = model_provenance.result_label(result_json)    # None, or "measured on ..., no longer shipped"
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = "defectgen/assets/default_bundle"
RANDOM_NETS = re.compile(r"/random(\d+)-")


@dataclass(frozen=True)
class Model:
    """One version of the shipped bundle: the commit that last changed it, that commit's date, and a name."""

    commit: str
    date: str  # YYYY-MM-DD (committer date)
    name: str  # e.g. "patch model (32 px window, 1.5x scale)"


def _git(*args: str) -> str | None:
    """stdout of a git command in the repository, or None when git is missing or the command fails."""
    try:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def model_name(manifest: dict[str, Any]) -> str:
    """A bundle manifest's model in words: patch models by window and pixel scale, whole-part ones by size."""
    patch = manifest.get("patch")
    if patch:
        return f"patch model ({patch.get('window')} px window, {float(patch.get('scale', 1)):g}x scale)"
    return f"whole-part {manifest.get('resolution')} px model"


def _model_at(*rev_args: str) -> Model | None:
    """The bundle in effect at a revision (`git log` arguments), or None when git cannot tell."""
    line = _git("log", "-1", "--format=%H %cs", *rev_args, "--", BUNDLE)
    if not line:
        return None
    commit, date = line.split()
    manifest = _git("show", f"{commit}:{BUNDLE}/manifest.json")
    try:
        name = model_name(json.loads(manifest)) if manifest else "model"
    except json.JSONDecodeError:
        name = "model"
    return Model(commit, date, name)


@lru_cache(maxsize=1)
def shipped() -> Model | None:
    """The shipped model: the last commit that changed the embedded bundle."""
    return _model_at("HEAD")


@lru_cache(maxsize=64)
def model_at(commit: str | None, date_utc: str | None) -> Model | None:
    """The embedded bundle a run stamped with (commit, date) used; None when git cannot tell."""
    if commit and _git("rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"):
        return _model_at(commit)
    if date_utc:
        return _model_at(f"--before={date_utc}", "HEAD")
    return None


def stale_label(commit: str | None, date_utc: str | None) -> str | None:
    """"measured on the <model> of <date>, no longer shipped" for a run on an earlier bundle, else None."""
    now, then = shipped(), model_at(commit, date_utc)
    if now is None or then is None or then.commit == now.commit:
        return None
    return f"measured on the {then.name} of {then.date}, no longer shipped"


def random_label(res: int | str) -> str:
    """The label of random-weight whole-part nets: never shipped, and no longer the shipped design if patch."""
    now = shipped()
    tail = "no longer shipped" if now is not None and now.name.startswith("patch") else "not the shipped model"
    return f"measured on random-weight {res} px whole-part nets, {tail}"


def machine_commit(machine: dict[str, Any]) -> tuple[str | None, str | None]:
    """(git commit, UTC date) of a result's machine stamp."""
    return (machine.get("git") or {}).get("commit"), machine.get("date_utc")


def result_label(result: dict[str, Any], random_res: int | None = None) -> str | None:
    """The label of a whole result: random-weight nets it names (or `random_res`), else its commit's bundle."""
    found = RANDOM_NETS.search(json.dumps({k: result.get(k) for k in ("graph", "bundle", "notes")}))
    if random_res is not None or found:
        return random_label(random_res if random_res is not None else found.group(1))
    return stale_label(*machine_commit(result.get("machine") or {}))


def added(path: Path) -> tuple[str, str] | None:
    """(commit, ISO date) of the commit that added a file, or None for a file git does not track."""
    rel = path.resolve().relative_to(ROOT)
    lines = (_git("log", "--diff-filter=A", "--format=%H %cI", "--", str(rel)) or "").splitlines()
    return (lines[-1].split()[0], lines[-1].split()[1]) if lines else None


def file_label(path: Path) -> str | None:
    """The label of a hand-written result file (no JSON stamp), by the commit that added it.

    Not the last commit that touched it: later edits (a renamed module in its text) measure nothing.
    """
    found = added(path)
    return stale_label(*found) if found else None
