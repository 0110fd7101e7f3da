"""MVTec AD category folders: a validating, lazy reader and an atomic writer.

Layout (one category, e.g. `hazelnut/`)::

    train/good/*.png                       good training images
    test/good/*.png                        good test images
    test/<type>/<stem>.png                 defective test images
    ground_truth/<type>/<stem>_mask.png    their masks (0/255)

The reader checks the layout up front (cheap: paths only) so a bad folder fails before hours of training,
and loads pixels only in `Item.load()`, so a 1000-image category costs a list of paths. The writer is what
`make-data` and `run` use to produce the same layout.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from defectgen import GOOD
from defectgen.data.imageio import IMAGE_SUFFIXES, read_image, read_mask, write_image, write_mask
from defectgen.errors import DataError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files (png/jpg/jpeg/bmp/tif) directly in `folder`, sorted by name; hidden/temp files skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        msg = f"image folder does not exist: {folder}"
        raise DataError(msg)
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


@dataclass(frozen=True)
class Item:
    """One image of a category: paths only; `load()` reads the pixels."""

    image_path: Path
    mask_path: Path | None  # None for good images
    defect_type: str  # "good" for good images
    split: str  # "train" or "test"

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 HxWx3 RGB image, uint8 HxW {0,1} mask); good images get an all-zero mask."""
        image = read_image(self.image_path)
        if self.mask_path is None:
            return image, np.zeros(image.shape[:2], np.uint8)
        return image, read_mask(self.mask_path, image.shape[:2])


class MVTecCategory:
    """A validated MVTec AD category folder.

    Args:
        root: The category folder (contains `train/`, `test/`, `ground_truth/`).
        check_files: Also decode every image and mask and check readability, binarity and that each mask has
            its image's size (slow on big folders; cheap path checks always run).

    Raises:
        DataError: naming the first missing folder, image without mask, or bad file.
    """

    def __init__(self, root: str | os.PathLike[str], *, check_files: bool = False) -> None:
        self.root = Path(root)
        for folder in (self.root, self.root / "train" / "good", self.root / "test"):
            if not folder.is_dir():
                msg = f"not an MVTec AD category: missing folder {folder}"
                raise DataError(msg)
        self._train = [Item(p, None, GOOD, "train") for p in list_images(self.root / "train" / "good")]
        if not self._train:
            msg = f"no good training images in {self.root / 'train' / 'good'}"
            raise DataError(msg)
        self._test = self._scan_test()
        if check_files:
            self.check_files()

    def _scan_test(self) -> list[Item]:
        items: list[Item] = []
        for sub in sorted(p for p in (self.root / "test").iterdir() if p.is_dir() and not p.name.startswith(".")):
            for img in list_images(sub):
                if sub.name == GOOD:
                    items.append(Item(img, None, GOOD, "test"))
                    continue
                mask = self.root / "ground_truth" / sub.name / f"{img.stem}_mask.png"
                if not mask.is_file():
                    msg = f"defect image has no mask (expected {mask}): {img}"
                    raise DataError(msg)
                items.append(Item(img, mask, sub.name, "test"))
        return items

    def check_files(self) -> None:
        """Decode every image and mask; raise `DataError` naming the first bad file."""
        for item in self._train + self._test:
            _, mask = item.load()
            if item.mask_path is not None and not mask.any():
                msg = f"defect mask is empty: {item.mask_path}"
                raise DataError(msg)

    @property
    def defect_types(self) -> list[str]:
        """Sorted defect types present under `test/` (every subfolder with images except `good`)."""
        return sorted({i.defect_type for i in self._test if i.defect_type != GOOD})

    def train_good(self) -> list[Item]:
        return list(self._train)

    def test_items(self, types: Iterable[str] | None = None) -> list[Item]:
        """Test items (good included), optionally only the given types ("good" is a type here)."""
        if types is None:
            return list(self._test)
        wanted = set(types)
        unknown = wanted - set(self.defect_types) - {GOOD}
        if unknown:
            msg = f"defect type(s) {sorted(unknown)} not in {self.root} (has {', '.join(self.defect_types)})"
            raise DataError(msg)
        return [i for i in self._test if i.defect_type in wanted]

    def defective_items(self, types: Iterable[str] | None = None) -> list[Item]:
        """Defective test items (those with masks), optionally only the given types."""
        return [i for i in self.test_items(types) if i.defect_type != GOOD]

    def __repr__(self) -> str:
        return (f"MVTecCategory({str(self.root)!r}, train_good={len(self._train)}, "
                f"test={len(self._test)}, defect_types={self.defect_types})")


def defect_relpaths(defect_type: str, name: str) -> tuple[str, str]:
    """`(test/<type>/<name>.png, ground_truth/<type>/<name>_mask.png)`: the one place MVTec output names are made."""
    return f"test/{defect_type}/{name}.png", f"ground_truth/{defect_type}/{name}_mask.png"


class MVTecWriter:
    """Writes images and masks into an MVTec AD layout under `root`, each file atomically."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @staticmethod
    def _check_name(name: str, what: str) -> None:
        if not _NAME.match(name):
            msg = f"bad {what} {name!r}: use letters, digits, '_', '-', '.' (no path separators)"
            raise DataError(msg)

    def write_good(self, split: str, name: str, image: np.ndarray) -> Path:
        """Write `<split>/good/<name>.png` (split is "train" or "test")."""
        if split not in ("train", "test"):
            msg = f"split must be 'train' or 'test', got {split!r}"
            raise DataError(msg)
        self._check_name(name, "file name")
        return write_image(self.root / split / GOOD / f"{name}.png", image)

    def write_defect(self, defect_type: str, name: str, image: np.ndarray, mask: np.ndarray) -> tuple[Path, Path]:
        """Write `test/<type>/<name>.png` and `ground_truth/<type>/<name>_mask.png` (0/255).

        The mask is written first so a crash in between never leaves an image without its mask.

        Returns:
            (image path, mask path).
        """
        self._check_name(defect_type, "defect type")
        self._check_name(name, "file name")
        if defect_type == GOOD:
            msg = "write_defect got defect type 'good'; use write_good"
            raise DataError(msg)
        rel_img, rel_mask = defect_relpaths(defect_type, name)
        img_path = self.root / rel_img
        if mask.shape != image.shape[:2]:
            msg = (f"mask size {mask.shape[1]}x{mask.shape[0]} != image size "
                   f"{image.shape[1]}x{image.shape[0]}: {img_path}")
            raise DataError(msg)
        if not mask.any():
            msg = f"defect mask is empty: {img_path}"
            raise DataError(msg)
        mask_path = write_mask(self.root / rel_mask, mask)
        return write_image(img_path, image), mask_path
