"""Turn each source into a folder of synthetic defects: `<out>/test/<type>/NNN.png` + masks (MVTec layout) and
`<out>/samples.jsonl` (one line per sample: image, mask, type, the good image it was made from).

Every source draws on the same good images in the same order (`plan_jobs`), so the only difference between
sources is how the defect is made.
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

SOURCES = ("defectgen", "cutpaste", "draem", "copypaste")
BASELINES = SOURCES[1:]
SAMPLES_FILE = "samples.jsonl"


@dataclass(frozen=True)
class Sample:
    """One synthetic defect on disk (absolute paths)."""

    image: str
    mask: str
    type: str
    good: str  # the good image it was made from (for background PSNR and change masks)


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
        samples.append(Sample(str(img_p), str(mask_p), kind, str(job.good)))
    write_samples(out, samples)
    return {"seconds": time.perf_counter() - t0, "count": len(samples), "failed": 0,
            "textures": os.fspath(textures) if textures else ("good images" if name == "draem" else None)}
