"""The review page writer: what the page lists (counts, newest line per job, the cap, type order), that record
strings are escaped, and the outline PNGs (a ring just outside the label, kept while newer than the mask)."""

from __future__ import annotations

import dataclasses
import os
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np

from defectgen.data.imageio import read_native, write_image, write_mask
from defectgen.runtime.jobs.record import JobRecord
from defectgen.runtime.jobs.review import write_review_page
from defectgen.runtime.jobs.run_folder import JobLog

_FIELDS = {"error": None, "seed": 1, "inputs": {"image": "a.png"}, "space": "wplus", "init": "encoder",
           "steps": 1, "lr": 0.1, "lambdas": {}, "mask_mode": "target", "detail": True, "guide_weight": 0.0,
           "mask_shape": "reference"}


class _Elements(HTMLParser):
    """Every start tag as (tag, attrs), and the text, of a page."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def find(self, tag: str, **attrs: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in attrs.items())]


def _mask(seed: int, h: int = 20, w: int = 24) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = np.zeros((h, w), np.uint8)
    y, x = rng.integers(2, h - 8), rng.integers(2, w - 8)
    m[y:y + 5, x:x + 6] = 1
    m[y + 2, x + 6:x + 9] = 1  # a thin tail: the ring goes around it, it stays visible
    return m


def _ok(out: Path, index: int, defect_type: str = "crack", **kw: object) -> JobRecord:
    image, mask = f"test/{defect_type}/{index:03d}.png", f"ground_truth/{defect_type}/{index:03d}_mask.png"
    write_image(out / image, np.full((20, 24, 3), 90 + index, np.uint8))
    write_mask(out / mask, _mask(index))
    return JobRecord(**{**_FIELDS, "id": f"id{defect_type}{index}", "index": index, "status": "ok",
                        "type": defect_type, "outputs": {"image": image, "mask": mask}, **kw})  # type: ignore[arg-type]


def _failed(index: int, error: str, defect_type: str = "hole", **kw: object) -> JobRecord:
    return JobRecord(**{**_FIELDS, "id": f"id{defect_type}{index}", "index": index, "status": "failed",
                        "error": error, "type": defect_type, "outputs": None, **kw})  # type: ignore[arg-type]


def _write(out: Path, *records: JobRecord) -> None:
    log = JobLog(out / "jobs.jsonl")
    for rec in records:
        log.append(rec)


def _page(out: Path, *args: object, **kw: object) -> _Elements:
    path = write_review_page(out, *args, **kw)  # type: ignore[arg-type]
    assert path == out / "index.html"
    return _Elements(path.read_text(encoding="utf-8"))


def test_counts_records_and_escaping(tmp_path: Path) -> None:
    evil = '<img src=x onerror=alert(1)> & "quoted"'
    _write(tmp_path,
           _ok(tmp_path, 0, window={"box": [0, 0, 48, 48], "scale": 1.5, "enlarged": True},
               proposal={"draw": 2, "draws": 8, "score": 0.123456},
               final_terms={"mask": 0.0123456, "bg": None, "prior": 2.5}),
           _ok(tmp_path, 1, inputs={"image": evil}),
           _failed(2, f"target mask is empty (no defect pixels): /in/{evil}.png"))
    page = _page(tmp_path, ["crack", "hole"])
    text = "".join(page.text)
    assert [a["data-status"] for a in page.find("article")] == ["ok", "ok", "failed"]
    raw = (tmp_path / "index.html").read_text()
    assert '<b id="n-ok">2</b>' in raw and '<b id="n-failed">1</b>' in raw
    assert not page.find("img", src="x")  # the record's markup stays text ...
    assert evil in text and f"/in/{evil}.png" in text  # ... and reads back exactly as it was written
    assert "<script>" not in raw.replace("<script>", "", 1)  # only the page's own script
    bases = page.find("img", **{"class": "base"})
    assert [a["src"] for a in bases if a.get("src")] == ["test/crack/000.png", "test/crack/001.png"]
    assert "1.5 (enlarged)" in text and "0.123" in text and "mask=0.012 bg=– prior=2.5" in text
    assert "critic" in text and "seed" in text and text.count("record") >= 3  # a details view per job
    sections = page.find("section")
    assert [s["data-type"] for s in sections] == ["crack", "hole"]
    assert "no-failed" in (sections[0]["class"] or "") and "no-failed" not in (sections[1]["class"] or "")


def test_outline_png_is_a_ring_just_outside_the_label(tmp_path: Path) -> None:
    _write(tmp_path, _ok(tmp_path, 4), _failed(5, "bad"))
    page = _page(tmp_path)
    outlines = [a["src"] for a in page.find("img", **{"class": "outline"}) if a.get("src")]
    assert outlines == ["review/crack/004_outline.png"]  # ok jobs only
    rgba, fmt = read_native(tmp_path / outlines[0])
    assert fmt.channels == "rgba" and rgba.shape == (20, 24, 4)
    mask = _mask(4)
    ring = cv2.dilate(mask, np.ones((3, 3), np.uint8)) & (1 - mask)
    assert np.array_equal(rgba[..., 3] > 0, ring > 0)
    assert np.all(rgba[ring > 0][:, :3] == (255, 40, 40)) and not rgba[mask > 0].any()


def test_outline_is_kept_while_newer_than_the_mask(tmp_path: Path) -> None:
    _write(tmp_path, _ok(tmp_path, 0))
    write_review_page(tmp_path)
    outline, mask = tmp_path / "review/crack/000_outline.png", tmp_path / "ground_truth/crack/000_mask.png"
    write_image(outline, np.zeros((20, 24, 4), np.uint8))  # a stand-in: untouched while newer than the mask
    t = mask.stat().st_mtime
    os.utime(outline, (t + 10, t + 10))
    write_review_page(tmp_path)
    assert not read_native(outline)[0].any()
    new = np.zeros((20, 24), np.uint8)
    new[5:9, 5:9] = 1
    write_mask(mask, new)
    os.utime(mask, (t + 20, t + 20))
    write_review_page(tmp_path)
    alpha = read_native(outline)[0][..., 3]
    assert (alpha > 0).sum() == 6 * 6 - 4 * 4  # redrawn around the new label


def test_cap_shows_the_first_jobs_by_index_and_says_how_many_more(tmp_path: Path) -> None:
    records = [_ok(tmp_path, i) for i in range(6)] + [_failed(i, f"e{i}", "crack") for i in range(6, 9)]
    _write(tmp_path, *records[::-1])  # shards append out of order
    page = _page(tmp_path, per_type=2)
    articles = page.find("article")
    assert [a["data-index"] for a in articles] == ["0", "1", "6", "7"]
    text = " ".join("".join(page.text).split())
    assert "showing the first 2 of 6 ok jobs (by index); 4 more are listed in jobs.jsonl" in text
    assert "showing the first 2 of 3 failed jobs (by index); 1 more are listed in jobs.jsonl" in text
    assert "crack 6 ok · 3 failed" in text
    assert sorted(p.name for p in (tmp_path / "review/crack").iterdir()) == ["000_outline.png", "001_outline.png"]


def test_newest_line_per_job_wins_and_unlisted_types_follow(tmp_path: Path) -> None:
    ok = _ok(tmp_path, 0, "crack")
    retried = dataclasses.replace(ok, status="failed", error="first try", outputs=None)
    _write(tmp_path, retried, ok, _ok(tmp_path, 1, "scratch"))
    page = _page(tmp_path, ["hole", "crack"])
    assert [s["data-type"] for s in page.find("section")] == ["hole", "crack", "scratch"]
    assert [a["data-status"] for a in page.find("article")] == ["ok", "ok"]
    text = "".join(page.text)
    assert "first try" not in text and "no jobs of this type in this folder" in text


def test_paths_outside_the_folder_get_no_outline(tmp_path: Path) -> None:
    out = tmp_path / "out"
    rec = _ok(out, 0)
    write_mask(tmp_path / "elsewhere_mask.png", _mask(0))
    _write(out, dataclasses.replace(rec, outputs={"image": "../x/000.png", "mask": "../elsewhere_mask.png"}))
    page = _page(out)
    assert not [a for a in page.find("img", **{"class": "outline"}) if a.get("src")]
    assert not (out / "review").exists() and not (tmp_path / "x").exists()


def test_empty_folder_gives_an_empty_page(tmp_path: Path) -> None:
    page = _page(tmp_path, ["crack"])
    raw = (tmp_path / "index.html").read_text()
    assert '<b id="n-ok">0</b>' in raw and not page.find("article") and page.find("input", id="outline")
