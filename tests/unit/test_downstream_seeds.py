"""Downstream benchmark: the per-(source, seed) segmenter cache. A rerun with the same work folder trains only
what changed; any changed input byte, seed or config trains again."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from downstream.seeds import Task, cache_key, save_arrays, train_task
from downstream.segmenter import SegConfig

CFG = SegConfig(res=16, width=4, depth=2, steps=3, batch=4, threads=1)


def _arrays(folder: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    masks = np.zeros((4, 16, 16), np.uint8)
    masks[:, 4:9, 5:11] = 1
    save_arrays(folder, "src", {"images": rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8), "masks": masks})
    np.save(folder / "good_images.npy", rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8))
    save_arrays(folder, "eval", {"images": rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8),
                                 "masks": np.concatenate([masks, np.zeros((1, 16, 16), np.uint8)]),
                                 "labels": np.array([1, 1, 1, 1, 0], np.uint8),
                                 "types": np.array(["crack", "crack", "hole", "hole", "good"])})
    return folder


def test_a_rerun_takes_the_cached_result_and_the_saved_net(tmp_path: Path) -> None:
    arrays = _arrays(tmp_path / "arrays")
    task = Task("src", 0, str(arrays), save_net=str(arrays / "net.pt"))
    first = train_task(task, CFG)
    net = (arrays / "net.pt").read_bytes()
    (arrays / "net.pt").unlink()
    again = train_task(task, CFG)
    assert not first["cached"] and again["cached"]
    assert again["metrics"] == first["metrics"] and again["per_type_ap"] == first["per_type_ap"]
    assert (arrays / "net.pt").read_bytes() == net  # the net the figures need comes back too
    assert list((tmp_path / "seg_cache").glob("*.tmp")) == []


@pytest.mark.parametrize("change", ["source", "seed", "config", "eval"])
def test_the_key_changes_with_every_input(tmp_path: Path, change: str) -> None:
    arrays = _arrays(tmp_path / "arrays")
    task = Task("src", 0, str(arrays))
    before = cache_key(task, CFG)
    cfg = CFG
    if change == "source":
        img = np.load(arrays / "src_images.npy")
        img[0, 0, 0, 0] ^= 1
        np.save(arrays / "src_images.npy", img)
    elif change == "seed":
        task = replace(task, seed=1)
    elif change == "config":
        cfg = replace(CFG, steps=4)
    else:
        np.save(arrays / "eval_labels.npy", np.array([1, 1, 1, 0, 0], np.uint8))
    assert cache_key(task, cfg) != before
    assert cache_key(task, cfg) == cache_key(task, cfg)
