"""Job model: ids/seeds, shards, sources (folder, MVTec, JSONL) and their up-front errors."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from defectgen.errors import DataError, JobError
from defectgen.runtime.jobs.sources import (
    check_types,
    folder_jobs,
    in_shard,
    job_identity,
    jsonl_jobs,
    mvtec_jobs,
    name_width,
    parse_shard,
    scan_jobs,
    with_variants,
)

TYPES = ["crack", "hole"]


def _png(path: Path, h: int = 8, w: int = 8, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), value, np.uint8))
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for i in range(5):
        _png(tmp_path / "img" / f"p{i}.png")
    return tmp_path / "img"


def test_identity_is_deterministic_and_seed_dependent() -> None:
    assert job_identity(0, "a") == job_identity(0, "a")
    assert job_identity(0, "a") != job_identity(1, "a")
    assert job_identity(0, "a")[0] != job_identity(0, "b")[0]
    assert 0 <= job_identity(3, "x")[1] < 2**63


@pytest.mark.parametrize("text", ["", "1", "1/0", "3/3", "-1/3", "a/b", "1/2/3"])
def test_bad_shard_strings(text: str) -> None:
    with pytest.raises(JobError, match="--shard"):
        parse_shard(text)


def test_shards_partition_the_set(folder: Path) -> None:
    ids = [j.id for j in folder_jobs(folder, masks=None, random_masks=3, types=TYPES, run_seed=0)]
    assert len(ids) == 15 and len(set(ids)) == 15
    shards = [parse_shard(f"{k}/3") for k in range(3)]
    covered = [j.id for s in shards for j in folder_jobs(folder, masks=None, random_masks=3, types=TYPES, run_seed=0)
               if in_shard(j.index, s)]
    assert sorted(covered) == sorted(ids)
    assert parse_shard(None) == (0, 1) and parse_shard(" 2 / 5 ") == (2, 5)


def test_random_masks_cycle_types(folder: Path) -> None:
    jobs = list(folder_jobs(folder, masks=None, random_masks=3, types=TYPES, run_seed=7))
    assert [j.defect_type for j in jobs[:4]] == ["crack", "hole", "crack", "hole"]
    assert [j.index for j in jobs] == list(range(15))
    again = list(folder_jobs(folder, masks=None, random_masks=3, types=TYPES, run_seed=7))
    assert [(j.id, j.seed) for j in jobs] == [(j.id, j.seed) for j in again]
    other = list(folder_jobs(folder, masks=None, random_masks=3, types=TYPES, run_seed=8))
    assert jobs[0].seed != other[0].seed


def test_masks_by_stem_and_missing_mask(folder: Path, tmp_path: Path) -> None:
    for i in range(5):
        _png(tmp_path / "m" / (f"p{i}.png" if i % 2 else f"p{i}_mask.png"), value=255)
    jobs = list(folder_jobs(folder, masks=tmp_path / "m", random_masks=None, types=TYPES, run_seed=0))
    assert [j.mask.name for j in jobs] == ["p0_mask.png", "p1.png", "p2_mask.png", "p3.png", "p4_mask.png"]
    (tmp_path / "m" / "p3.png").unlink()
    with pytest.raises(DataError, match="no mask for image .*p3.png"):
        scan_jobs(folder_jobs(folder, masks=tmp_path / "m", random_masks=None, types=TYPES, run_seed=0))


def test_empty_or_missing_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        scan_jobs(folder_jobs(tmp_path / "empty", masks=None, random_masks=1, types=TYPES, run_seed=0))
    with pytest.raises(DataError, match="does not exist"):
        scan_jobs(folder_jobs(tmp_path / "nope", masks=None, random_masks=1, types=TYPES, run_seed=0))


def test_mvtec_uses_train_and_test_good(tmp_path: Path) -> None:
    root = tmp_path / "cat"
    _png(root / "train" / "good" / "000.png")
    _png(root / "train" / "good" / "001.png")
    _png(root / "test" / "good" / "000.png")
    jobs = list(mvtec_jobs(root, random_masks=2, types=TYPES, run_seed=0))
    assert [j.source for j in jobs[::2]] == ["train/good/000.png", "train/good/001.png", "test/good/000.png"]
    assert len({j.id for j in jobs}) == 6


def _jsonl(tmp_path: Path, lines: list[object]) -> Path:
    path = tmp_path / "jobs" / "list.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_jsonl_jobs(tmp_path: Path) -> None:
    _png(tmp_path / "jobs" / "a.png")
    _png(tmp_path / "jobs" / "m" / "a.png", value=255)
    path = _jsonl(tmp_path, [{"image": "a.png", "mask": "m/a.png", "type": "hole"}, "", "# comment",
                             {"image": "a.png", "seed": 5}, {"image": "a.png", "reference": ["a.png", "m/a.png"]}])
    jobs = list(jsonl_jobs(path, types=TYPES, run_seed=0))
    assert [j.defect_type for j in jobs] == ["hole", "hole", "crack"]  # default cycles by position
    assert jobs[0].mask is not None and jobs[1].mask is None and jobs[1].seed == 5
    assert jobs[2].reference is not None and len({j.id for j in jobs}) == 3


@pytest.mark.parametrize(("line", "err", "match"), [
    ({"image": "missing.png"}, DataError,
     r"list.jsonl:1: image file does not exist: .*missing.png \(relative paths are read from the job list's folder"),
    ({"image": "a.png", "mask": "../a.png"}, DataError, "list.jsonl:1: mask file does not exist"),
    ({"image": 3}, JobError, r"list.jsonl:1: 'image' must be a non-empty path string \(relative to the job list's"),
    ({"image": "a.png", "type": "crak"}, JobError, r"list.jsonl:1: unknown defect type 'crak' \(did you mean 'crack'"),
    ({"image": "a.png", "colour": 1}, JobError, "unknown field"),
    ({"image": "a.png", "seed": -1}, JobError, "seed"),
    ({"image": "a.png", "reference": ["a.png"]}, JobError, "reference"),
    ("{not json", JobError, r"list.jsonl:1: not valid JSON"),
    ("[1, 2]", JobError, "expected a JSON object"),
])
def test_jsonl_errors_name_the_line(tmp_path: Path, line: object, err: type, match: str) -> None:
    _png(tmp_path / "outside.png")
    _png(tmp_path / "jobs" / "a.png")
    with pytest.raises(err, match=match):
        scan_jobs(jsonl_jobs(_jsonl(tmp_path, [line]), types=TYPES, run_seed=0))


def test_jsonl_paths_outside_the_folder_are_read_and_keyed_absolute(tmp_path: Path) -> None:
    outside = _png(tmp_path / "data" / "outside.png").resolve()
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "link.png").symlink_to(outside)
    lines = [{"image": str(outside)}, {"image": "../data/outside.png"}, {"image": "link.png", "mask": str(outside)}]
    jobs = list(jsonl_jobs(_jsonl(tmp_path, lines), types=TYPES, run_seed=0))
    assert [j.image for j in jobs] == [outside] * 3  # absolute, climbing out with `..`, or a link out: all read
    assert [j.source for j in jobs] == [outside.as_posix()] * 3  # a file outside the folder is keyed by its path
    assert f"|mask={outside.as_posix()}|" in jobs[2].key


def test_jsonl_key_of_a_file_inside_is_the_same_relative_or_absolute(tmp_path: Path) -> None:
    inside = _png(tmp_path / "jobs" / "parts" / "a.png").resolve()
    _png(tmp_path / "jobs" / "m.png", value=255)
    [a] = jsonl_jobs(_jsonl(tmp_path, [{"image": "parts/a.png", "mask": "m.png"}]), types=TYPES, run_seed=0)
    [b] = jsonl_jobs(_jsonl(tmp_path, [{"image": str(inside), "mask": str(inside.parent.parent / "m.png")}]),
                     types=TYPES, run_seed=0)
    assert a.key == b.key and a.id == b.id and a.seed == b.seed and a.image == b.image == inside
    assert a.source == b.source == "parts/a.png" and "|mask=m.png|" in a.key


def test_check_types_and_scan(folder: Path) -> None:
    assert check_types(None, ["good", "crack", "hole"]) == ["crack", "hole"]
    assert check_types(["hole", "hole"], ["good", "crack", "hole"]) == ["hole"]
    with pytest.raises(JobError, match=r"unknown defect type 'hol' \(did you mean 'hole'"):
        check_types(["hol"], ["good", "crack", "hole"])
    a = scan_jobs(folder_jobs(folder, masks=None, random_masks=2, types=TYPES, run_seed=0))
    b = scan_jobs(folder_jobs(folder, masks=None, random_masks=3, types=TYPES, run_seed=0))
    assert a.count == 10 and a.fingerprint != b.fingerprint
    assert name_width(10) == 3 and name_width(1001) == 4


def test_variants_repeat_each_job_with_its_target_and_new_ids(folder: Path) -> None:
    base = list(folder_jobs(folder, masks=None, random_masks=2, types=TYPES, run_seed=0))
    assert list(with_variants(iter(base), 1)) == base
    out = list(with_variants(iter(base), 3))
    assert [s.index for s in out] == list(range(3 * len(base)))
    assert [s.variant for s in out[:3]] == [0, 1, 2]
    for i, spec in enumerate(base):
        group = out[3 * i:3 * i + 3]
        assert {(s.image, s.mask, s.defect_type, s.seed, s.reference) for s in group} == {
            (spec.image, spec.mask, spec.defect_type, spec.seed, spec.reference)}  # one target
    assert len({s.id for s in out}) == len(out)  # every variant is its own job for resume
