"""Make every source's synthetic set once (seeded), before any segmenter is trained on it.

The defectgen rows run `defectgen run` in subprocesses, side by side when `--jobs` > 1 (one ONNX Runtime thread
each); the baselines run in-process. A defectgen variant whose options all equal what the main row runs with
(its `--run-args`, else the bundle's recommended settings) would be the same set: it is not made twice but
recorded as an alias (`same_as`) of the main row.
"""

from __future__ import annotations

import shlex
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .defectgen_source import generate_defectgen
from .sources import (
    BASELINES,
    DEFECTGEN_VARIANTS,
    MIX_OF,
    Job,
    Sample,
    generate_baseline,
    mix_samples,
    read_samples,
    real_samples,
    write_samples,
)
from .split import Split


@dataclass(frozen=True)
class GenContext:
    split: Split
    jobs: list[Job]
    work: Path
    bundle: Path | None
    seed: int
    iou_jobs: int
    run_args: str
    textures: Path | None
    parallel: int
    threads: int  # ONNX Runtime threads of each `defectgen run` (1 when runs go side by side)

    def out(self, name: str) -> Path:
        return self.work / "sources" / name


def _last_given(run_args: list[str], flag: str) -> str | None:
    """The value of the last `flag V` or `flag=V` in `run_args` (None: not given)."""
    given = [(i, run_args[i + 1]) for i, a in enumerate(run_args[:-1]) if a == flag]
    given += [(i, a.split("=", 1)[1]) for i, a in enumerate(run_args) if a.startswith(f"{flag}=")]
    return max(given)[1] if given else None


def _main_detail(run_args: list[str], run_defaults: dict[str, Any]) -> bool:
    """Whether the main row adds the detail layer: the last --detail/--no-detail, else the bundle's, else on."""
    flags = [(i, a == "--detail") for i, a in enumerate(run_args) if a in ("--detail", "--no-detail")]
    return max(flags)[1] if flags else bool(run_defaults.get("detail", True))


def _main_value(flag: str, run_args: list[str], run_defaults: dict[str, Any]) -> float | str:
    """What the main row runs with for one of the variants' options: given, else the bundle's, else the
    runtime's default."""
    value = _last_given(run_args, flag)
    if flag == "--guide-weight":
        return float(value) if value is not None else float(run_defaults.get("guide_weight", 0.0))
    if flag == "--mask-mode":
        return value if value is not None else str(run_defaults.get("mask_mode") or "target")
    if flag == "--detail-from":
        return value if value is not None else "reference"  # no bundle default
    raise ValueError(f"no rule for the main row's {flag}")


def _equal(value: str, main: float | str) -> bool:
    """A variant's option value (as given on the command line) against the main row's resolved one."""
    return (float(value) if isinstance(main, float) else value) == main


def aliases(names: list[str], run_defaults: dict[str, Any], run_args: str) -> dict[str, str]:
    """Variant -> "defectgen" for the variant rows that would repeat the main row exactly: every option of the
    variant equals the main row's. A detail-source variant of a main row without the detail layer has no detail
    to take elsewhere: it is the main row too (and `defectgen run` would refuse it)."""
    if "defectgen" not in names:
        return {}
    args = shlex.split(run_args)
    out = {}
    for v, extra in DEFECTGEN_VARIANTS.items():
        if v == "defectgen" or v not in names:
            continue
        pairs = list(zip(extra[::2], extra[1::2], strict=True))
        same = all(_equal(value, _main_value(flag, args, run_defaults)) for flag, value in pairs)
        if same or ("--detail-from" in extra[::2] and not _main_detail(args, run_defaults)):
            out[v] = "defectgen"
    return out


def needed(names: list[str], alias: dict[str, str]) -> list[str]:
    """Sources to make: the requested ones that are not aliases, plus what `mix` is made of."""
    out = [n for n in names if n not in alias]
    if "mix" in names:
        out += [m for m in MIX_OF if m not in out]
    return out


def _make(name: str, ctx: GenContext) -> dict[str, Any]:
    if name in DEFECTGEN_VARIANTS:
        extra = [*shlex.split(ctx.run_args), *DEFECTGEN_VARIANTS[name]]
        return generate_defectgen(ctx.jobs, ctx.split, ctx.out(name), bundle=ctx.bundle, seed=ctx.seed,
                                  work=ctx.work / "defectgen" / name, extra=extra,
                                  iou_jobs=ctx.iou_jobs if name == "defectgen" else 0,
                                  threads=ctx.threads)
    if name in BASELINES:
        return generate_baseline(name, ctx.jobs, ctx.split, ctx.out(name), seed=ctx.seed, textures=ctx.textures)
    raise ValueError(f"{name} is made from other sources")


def _listed(name: str, samples: list[Sample], ctx: GenContext, info: dict[str, Any]) -> dict[str, Any]:
    ctx.out(name).mkdir(parents=True, exist_ok=True)
    write_samples(ctx.out(name), samples)
    return {"seconds": 0.0, "count": len(samples), "failed": 0, **info}


def generate_all(names: list[str], ctx: GenContext) -> dict[str, dict[str, Any]]:
    """Make the sources in `names` (in parallel where allowed); returns each one's generation info."""
    direct = [n for n in names if n not in ("mix", "real")]
    with ThreadPoolExecutor(max_workers=max(1, ctx.parallel)) as pool:
        futures = {n: pool.submit(_make, n, ctx) for n in direct}
        info = {n: f.result() for n, f in futures.items()}
    if "mix" in names:
        a, b = (read_samples(ctx.out(m)) for m in MIX_OF)
        info["mix"] = _listed("mix", mix_samples(a, b, len(ctx.jobs)), ctx,
                              {"made_of": list(MIX_OF), "rule": "even jobs from the first, odd from the second"})
    if "real" in names:
        info["real"] = _listed("real", real_samples(ctx.split), ctx, {"made_of": "the held-in real defects"})
    return info
