"""The few-shot split of AnomalyDiffusion's protocol: per defect type, the first third of the real defects by
sorted file name is held in (generator side: training data, references, copy-paste bank), the rest held out
(evaluation only). A fixed rule rather than a random draw, so that a generator trained elsewhere on "the
held-in third" can be checked against the exact same files.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from defectgen import GOOD
from defectgen.data.mvtec import Item, MVTecCategory


@dataclass(frozen=True)
class Split:
    """Held-in (generator side) and held-out (evaluation) defective items by type, plus the good images."""

    held_in: dict[str, list[Item]]
    held_out: dict[str, list[Item]]
    train_good: list[Item]
    test_good: list[Item]

    @property
    def types(self) -> list[str]:
        return sorted(self.held_in)

    def describe(self) -> dict[str, object]:
        """Counts and file names per type, for the results JSON (so a reader can check the split)."""
        return {"train_good": len(self.train_good), "test_good": len(self.test_good),
                "held_in": {t: [i.image_path.name for i in v] for t, v in self.held_in.items()},
                "held_out": {t: len(v) for t, v in self.held_out.items()}}


def split_category(cat: MVTecCategory, *, fraction: float = 1 / 3) -> Split:
    """Split each type's defective images: the first `ceil(fraction * n)` by sorted file name held in.

    Sorting by name makes the split a function of the file names alone (not of listing order or of other
    types). A type with at least two images keeps at least one on each side.
    """
    held_in: dict[str, list[Item]] = {}
    held_out: dict[str, list[Item]] = {}
    for t in cat.defect_types:
        items = sorted(cat.defective_items([t]), key=lambda i: i.image_path.name)
        k = int(np.ceil(fraction * len(items) - 1e-9))
        if len(items) >= 2:
            k = min(max(k, 1), len(items) - 1)
        held_in[t], held_out[t] = items[:k], items[k:]
    return Split(held_in=held_in, held_out=held_out, train_good=cat.train_good(), test_good=cat.test_items([GOOD]))


def validation_split(split: Split) -> Split:
    """A split for tuning that never touches the held-out defects or the test images.

    Each type's held-in defects are halved again (first half: references / copy-paste bank / training data,
    second half: evaluation), and the last tenth of train/good (at least 2) replaces test/good as the good
    evaluation images (and is no longer used as canvases or negatives).
    """
    k = max(2, len(split.train_good) // 10) if len(split.train_good) > 2 else 0
    half = {t: max(1, (len(v) + 1) // 2) if len(v) >= 2 else len(v) for t, v in split.held_in.items()}
    return Split(held_in={t: v[:half[t]] for t, v in split.held_in.items()},
                 held_out={t: v[half[t]:] for t, v in split.held_in.items()},
                 train_good=split.train_good[:len(split.train_good) - k],
                 test_good=split.train_good[len(split.train_good) - k:])


def write_held_in(split: Split, out: Path) -> Path:
    """Copy train/good and the held-in defects into an MVTec-layout folder: all a fair bundle may be trained on."""
    for item in split.train_good:
        dst = out / "train" / GOOD / item.image_path.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(item.image_path, dst)
    (out / "test").mkdir(parents=True, exist_ok=True)
    for t, items in split.held_in.items():
        for item in items:
            for src, sub in ((item.image_path, "test"), (item.mask_path, "ground_truth")):
                dst = out / sub / t / src.name
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
    return out
