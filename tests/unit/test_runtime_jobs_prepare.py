"""Preparing a job: random target masks; and the `jobs.jsonl` record of a job."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from defectgen.data.procedural import render_part
from defectgen.runtime.jobs import prepare
from defectgen.runtime.jobs.invert import InversionConfig
from defectgen.runtime.jobs.prepare import target_mask
from defectgen.runtime.jobs.record import JobRecord
from defectgen.runtime.jobs.settings import RunSettings
from defectgen.runtime.jobs.sources import JobSpec


def _spec(**kw: object) -> JobSpec:
    base = {"index": 7, "key": "k", "id": "abc", "seed": 3, "image": Path("/x/a.png"), "mask": None,
            "defect_type": "crack", "source": "sub/a b.png"}
    return JobSpec(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize("side", [96, 700])
def test_random_target_mask_is_deterministic_and_full_size(side: int) -> None:
    import cv2

    img, part = render_part(np.random.default_rng(0), 96)
    img = cv2.resize(img, (side, side), interpolation=cv2.INTER_CUBIC)
    a, b = target_mask(_spec(), img), target_mask(_spec(), img)
    assert a.shape == (side, side) and a.dtype == np.uint8 and a.any() and np.array_equal(a, b)
    assert not np.array_equal(a, target_mask(_spec(seed=4), img))


def test_the_part_region_is_found_once_per_image(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = prepare.part_mask
    monkeypatch.setattr(prepare, "part_mask", lambda im: calls.append(1) or real(im))
    monkeypatch.setattr(prepare, "_part_of", prepare._PartCache(size=2))
    imgs = [render_part(np.random.default_rng(k), 96)[0] for k in range(3)]
    first = [target_mask(_spec(seed=s), imgs[0]) for s in range(4)]
    assert len(calls) == 1  # four targets on one image: one part search
    assert first[0].any() and not np.array_equal(first[0], first[1])  # still a different target per job
    target_mask(_spec(), imgs[0].copy())  # same content, another array: found by content
    assert len(calls) == 1
    target_mask(_spec(), imgs[1]), target_mask(_spec(), imgs[2]), target_mask(_spec(), imgs[0])
    assert len(calls) == 4  # the cache holds two images: the first was evicted
    uncached = prepare._PartCache(size=0)
    monkeypatch.setattr(prepare, "_part_of", uncached)
    assert np.array_equal(target_mask(_spec(seed=2), imgs[0]), first[2])  # the cache changes no target


def test_record_is_json_safe_with_nan() -> None:
    settings = RunSettings(InversionConfig(space="w", steps=2, lr=0.1, init="wavg", lambdas={"mask": 1.0}))
    rec = JobRecord.of(_spec(), settings, status="failed", error="boom", final_terms=np.full(6, np.nan),
                       history=np.array([1.0, np.inf, np.nan]), steps_run=1, seconds=0.5, backend="ort-cpu")
    line = rec.to_line()
    assert json.loads(line)["objective"] == [1.0, None, None]
    assert rec.inputs == {"image": "sub/a b.png", "mask": "random", "reference": None}
    assert JobRecord.from_line(line) == rec and json.loads(line)["space"] == "w"


def test_pick_batch_takes_the_smallest_graph_that_holds_the_jobs() -> None:
    from defectgen.runtime.jobs.settings import pick_batch

    assert pick_batch([1, 4, 8], 1) == 1 and pick_batch([4, 1, 8], 3) == 4 and pick_batch([1, 4, 8], 8) == 8
    assert pick_batch([1, 4, 8], 50) == 8 and pick_batch([4], 1) == 4
