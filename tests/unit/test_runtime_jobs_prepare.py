"""Preparing a job: random target masks; and the `jobs.jsonl` record of a job."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from defectgen.data.procedural import render_part
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
