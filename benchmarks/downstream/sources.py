"""Turn each source into a folder of synthetic defects: `<out>/test/<type>/NNN.png` + masks (MVTec layout) and
`<out>/samples.jsonl` (one line per sample: image, mask, type, the good image it was made from).

Every source draws on the same good images in the same order (`plan_jobs`), so the only difference between
sources is how the defect is made. `mix` is made from two other sources' samples (job by job) and `real` is the
held-in real defects themselves, listed in place.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from defectgen.data.imageio import atomic_write_text, read_image
from defectgen.data.masks import part_mask
from defectgen.data.mvtec import MVTecWriter, list_images

from . import baselines
from .split import Split

# defectgen with the bundle's recommended settings, then with a fixed guide weight: 1 = the stitched real defect
# through our pipeline (copy-paste), 0 = G's own image
# The _g1 row pastes the stitched real defect, which fills the target mask: its label is the target, whatever
# mask mode the bundle recommends for the generator's own pixels. `_surface`: the detail above G's resolution
# from the good part's own grain instead of the stitched real defect, so every defect pixel above it is G's.
# Each variant is flag/value pairs; `aliases` compares them with the main row's.
DEFECTGEN_VARIANTS = {"defectgen": (), "defectgen_g1": ("--guide-weight", "1", "--mask-mode", "target"),
                      "defectgen_g0": ("--guide-weight", "0"), "defectgen_surface": ("--detail-from", "surface")}
BASELINES = ("copypaste", "draem", "cutpaste")
SOURCES = (*DEFECTGEN_VARIANTS, *BASELINES, "mix", "real")
MIX_OF = ("defectgen", "copypaste")  # mix: even jobs from the first, odd jobs from the second
SAMPLES_FILE = "samples.jsonl"


@dataclass(frozen=True)
class Sample:
    """One synthetic defect on disk (absolute paths)."""

    image: str
    mask: str
    type: str
    good: str | None  # the good image it was made from (background PSNR, change masks); None for real defects
    index: int = -1  # the job it was made for (`plan_jobs`), -1 for real defects


@dataclass(frozen=True)
class Job:
    index: int
    good: Path
    type: str  # the real defect type this sample stands for (cycled over the data's types)


def plan_jobs(goods: Sequence[Path], types: Sequence[str], n: int) -> list[Job]:
    """`n` jobs: goods in contiguous blocks (each good used ~n/len(goods) times), types cycling."""
    return [Job(i, goods[i * len(goods) // n], types[i % len(types)]) for i in range(n)]


def write_samples(out: Path, samples: list[Sample]) -> None:
    atomic_write_text(out / SAMPLES_FILE, "".join(json.dumps(asdict(s)) + "\n" for s in samples))


def read_samples(out: Path) -> list[Sample]:
    lines = (out / SAMPLES_FILE).read_text(encoding="utf-8").splitlines()
    return [Sample(**json.loads(line)) for line in lines if line.strip()]


def fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


class _GoodCache:
    """The last good image and its part mask: jobs come in blocks per good, so one slot is enough."""

    def __init__(self) -> None:
        self.key: Path | None = None
        self.value: tuple[np.ndarray, np.ndarray] | None = None

    def get(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        if self.key != path or self.value is None:
            img = read_image(path)
            self.key, self.value = path, (img, part_mask(img))
        return self.value


Made = tuple[np.ndarray, np.ndarray, str]  # (image, mask, type label)
Maker = Callable[[Job, np.ndarray, np.ndarray, np.random.Generator], Made]


def _cutpaste_maker() -> Maker:
    def make(job: Job, good: np.ndarray, part: np.ndarray, rng: np.random.Generator) -> Made:
        if job.index % 2 == 0:
            return (*baselines.cutpaste_scar(good, part, rng), "scar")
        return (*baselines.cutpaste_patch(good, part, rng), "patch")
    return make


def _draem_maker(goods: Sequence[Path], textures: Sequence[Path] | None) -> Maker:
    pool = list(textures) if textures else list(goods)

    def make(job: Job, good: np.ndarray, part: np.ndarray, rng: np.random.Generator) -> Made:
        choices = [p for p in pool if p != job.good] or pool  # another good image than the one defaced
        tex = read_image(choices[int(rng.integers(len(choices)))])
        return (*baselines.draem(good, part, tex, rng), "perlin")
    return make


def _copypaste_maker(split: Split) -> Maker:
    loaded: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}

    def make(job: Job, good: np.ndarray, part: np.ndarray, rng: np.random.Generator) -> Made:
        if job.type not in loaded:
            loaded[job.type] = [item.load() for item in split.held_in[job.type]]
        ref_img, ref_mask = loaded[job.type][int(rng.integers(len(loaded[job.type])))]
        return (*baselines.copy_paste(good, part, ref_img, ref_mask, rng), job.type)
    return make


def generate_baseline(name: str, jobs: list[Job], split: Split, out: Path, *, seed: int,
                      textures: Path | None = None) -> dict[str, object]:
    """Write one baseline source under `out` (replaced); returns timing info."""
    if name == "cutpaste":
        make = _cutpaste_maker()
    elif name == "draem":
        tex = list_images(textures) if textures else None
        if textures and not tex:
            raise FileNotFoundError(f"--textures {textures} holds no images")
        make = _draem_maker([j.good for j in jobs], tex)
    elif name == "copypaste":
        make = _copypaste_maker(split)
    else:
        raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    fresh_dir(out)
    writer, cache, samples = MVTecWriter(out), _GoodCache(), []
    width = max(3, len(str(len(jobs) - 1)))
    t0 = time.perf_counter()
    for job in jobs:
        rng = np.random.default_rng([seed, zlib.crc32(name.encode()), job.index])
        good, part = cache.get(job.good)
        image, mask, kind = make(job, good, part, rng)
        img_p, mask_p = writer.write_defect(kind, f"{job.index:0{width}d}", image, mask)
        samples.append(Sample(str(img_p), str(mask_p), kind, str(job.good), job.index))
    write_samples(out, samples)
    return {"seconds": time.perf_counter() - t0, "count": len(samples), "failed": 0,
            "textures": os.fspath(textures) if textures else ("good images" if name == "draem" else None)}


def mix_samples(a: list[Sample], b: list[Sample], n: int) -> list[Sample]:
    """Job i from `a` when i is even, from `b` when odd (falling back to the other where one failed).

    Both lists come from `plan_jobs` on the same goods, so the mix keeps the common canvas order.
    """
    by_a, by_b = {s.index: s for s in a}, {s.index: s for s in b}
    out = []
    for i in range(n):
        first, second = (by_a, by_b) if i % 2 == 0 else (by_b, by_a)
        pick = first.get(i) or second.get(i)
        if pick is not None:
            out.append(pick)
    return out


def real_samples(split: Split) -> list[Sample]:
    """The held-in real defects as samples (no good image: they are not made from one)."""
    return [Sample(str(i.image_path), str(i.mask_path), t, None) for t in split.types for i in split.held_in[t]]
