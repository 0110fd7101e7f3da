"""Training data: a whole MVTec-layout category loaded once into memory at model resolution.

Sets are small (MVTec hazelnut: 391 good + ~70 defective images; at 256 px that is ~0.4 GB as float32), so
one in-memory tensor beats a DataLoader: no workers, no per-step decoding, and the sampler is a pure function of
(seed, step), which makes `--resume` exact and gives every rank its own slice of the same global batch.
Pixels are read only through `defectgen.data` (one image loader in the project).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from defectgen import GOOD
from defectgen.data.imageio import mask_to_model, to_model
from defectgen.data.mvtec import Item, MVTecCategory
from defectgen.errors import DataError


@dataclass
class TrainData:
    """Images [N,3,R,R] in [-1,1], masks [N,1,R,R] in {0,1}, type ids [N] (0 = good) and source paths."""

    images: torch.Tensor
    masks: torch.Tensor
    types: torch.Tensor
    type_names: list[str]
    paths: list[str]

    def __len__(self) -> int:
        return int(self.types.shape[0])

    def subset(self, idx: np.ndarray | list[int]) -> TrainData:
        idx_t = torch.as_tensor(np.asarray(idx, dtype=np.int64))
        return TrainData(self.images[idx_t], self.masks[idx_t], self.types[idx_t], list(self.type_names),
                         [self.paths[i] for i in np.asarray(idx, dtype=np.int64).tolist()])


def open_category(root: str | os.PathLike[str]) -> MVTecCategory:
    """The category at `root`, or a one-line `DataError` (missing folder, not MVTec layout)."""
    return MVTecCategory(root)


def _load(items: list[Item], res: int, type_ids: dict[str, int]) -> TrainData:
    imgs, masks, types, paths = [], [], [], []
    for it in items:
        image, mask = it.load()
        imgs.append(to_model(image, res))
        masks.append(mask_to_model(mask, res))
        types.append(type_ids[it.defect_type])
        paths.append(str(it.image_path))
    names = sorted(type_ids, key=type_ids.get)  # type: ignore[arg-type]
    return TrainData(torch.from_numpy(np.stack(imgs)), torch.from_numpy(np.stack(masks)),
                     torch.tensor(types, dtype=torch.int64), names, paths)


def _split(items: list[Item], keep: float, rng: np.random.Generator) -> tuple[list[Item], list[Item]]:
    """Random split keeping round(keep * n) items (at least one when keep > 0), order by path kept."""
    n = len(items)
    k = min(n, max(1 if keep > 0 else 0, round(keep * n)))
    chosen = set(rng.permutation(n)[:k].tolist())
    return [it for i, it in enumerate(items) if i in chosen], [it for i, it in enumerate(items) if i not in chosen]


def load_training_set(root: str | os.PathLike[str], res: int, *, type_names: list[str] | None = None,
                      defect_fraction: float = 1.0, holdout: float = 0.0,
                      seed: int = 0) -> tuple[TrainData, TrainData]:
    """Load train/good (type good, empty masks) + the defective test images with their masks.

    Args:
        root: MVTec-layout category folder.
        res: Model resolution.
        type_names: Type list fixing the ids (the GAN's, when training an encoder); default
            `["good"] + sorted defect types of the dataset`.
        defect_fraction: Fraction of each defect type used for training (the rest is held out, for the real
            MVTec protocol where test images must stay unseen); 1.0 = all.
        holdout: Fraction of good *and* of each defect type held out (the encoder's quality report).
        seed: Seeds the random splits.

    Returns:
        (training set, held-out set); the held-out set may be empty.
    """
    cat = open_category(root)
    names = list(type_names) if type_names is not None else [GOOD, *cat.defect_types]
    if names[0] != GOOD:
        msg = f"type id 0 must be {GOOD!r}, got {names}"
        raise DataError(msg)
    unknown = sorted(set(cat.defect_types) - set(names))
    if unknown:
        msg = f"dataset {root} has defect types {unknown} the model does not know (model types: {names})"
        raise DataError(msg)
    type_ids = {n: i for i, n in enumerate(names)}
    rng = np.random.default_rng(seed)
    train, held = _split(cat.train_good(), 1.0 - holdout, rng)
    for t in cat.defect_types:
        tr, he = _split(cat.defective_items([t]), (1.0 - holdout) * defect_fraction, rng)
        train += tr
        held += he
    if not train:
        msg = f"no training images in {root}"
        raise DataError(msg)
    empty = TrainData(torch.zeros(0, 3, res, res), torch.zeros(0, 1, res, res), torch.zeros(0, dtype=torch.int64),
                      names, [])
    return _load(train, res, type_ids), (_load(held, res, type_ids) if held else empty)


class Sampler:
    """Stateless weighted sampler: `indices(step)` = this rank's slice of the global batch of `step`.

    Defective images are rare (MVTec hazelnut: ~70 vs 391 good), so each draw is good with probability
    `good_share` and otherwise of a defect type chosen uniformly among those present, then an image uniformly
    within its type (with replacement). With the default 0.5, each of 4 defect types fills 1/8 of a batch.
    The global batch of a step depends only on (seed, step), not on the number of ranks' history, so a resume
    continues the exact sequence.
    """

    def __init__(self, types: torch.Tensor, *, good_share: float, seed: int, batch: int, rank: int = 0,
                 world_size: int = 1) -> None:
        t = types.numpy()
        present = sorted(set(t[t != 0].tolist()))
        p = np.zeros(len(t), np.float64)
        n_good = int((t == 0).sum())
        share = good_share if present and n_good else (1.0 if n_good else 0.0)
        if n_good:
            p[t == 0] = share / n_good
        for k in present:
            p[t == k] = (1.0 - share) / len(present) / int((t == k).sum())
        self.p = p / p.sum()
        self.seed, self.batch, self.rank, self.world = seed, batch, rank, world_size

    def indices(self, step: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step, 0x5A4D])
        glob = rng.choice(len(self.p), size=self.batch * self.world, p=self.p)
        return glob[self.rank * self.batch:(self.rank + 1) * self.batch]
