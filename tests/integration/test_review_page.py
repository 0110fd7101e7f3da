"""The review page of a real `defectgen run` (toy bundle, one failed job) in headless Chromium, opened from file://
as a user would: no console errors, every result decoded, the outline toggle, the zoom at native pixels and the
failed-only filter work.

Chromium is Debian's package (`.ci/run` installs it), driven by Playwright with that binary: no browser download.
Without a chromium binary the test skips on a developer box and fails under CI.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_helpers import invoke, jobs_log, make_images
from playwright.sync_api import Browser, Page, sync_playwright

from defectgen.data.imageio import write_mask

EVIL = "<img src=x onerror=alert(1)>"  # a file name that is markup: it must show as text


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail("CI is set but there is no chromium on PATH (.ci/run installs Debian's chromium package)")
    pytest.skip("no chromium on PATH (apt-get install chromium); CI runs this test")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    exe = _chromium()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory, run_bundle: Callable[..., Path]) -> Path:
    root = tmp_path_factory.mktemp("review")
    make_images(root / "images", 3, masks=root / "masks")
    write_mask(root / "masks" / f"{EVIL}.png", np.zeros((40, 56), np.uint8))  # empty: that job fails
    lines = [{"image": "images/part_00.png", "mask": "masks/part_00.png", "type": "hole"},
             {"image": "images/part_01.png", "mask": None, "type": "crack"},
             {"image": "images/part_02.png", "mask": f"masks/{EVIL}.png", "type": "crack"},
             {"image": "images/part_02.png", "mask": None, "type": "hole"}]
    (root / "list.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = root / "out"
    code, stdout, stderr = invoke("run", "--bundle", run_bundle(root / "bundle"), "--jobs", root / "list.jsonl",
                                  "--out", out)
    assert code == 1, stderr  # one job failed
    assert f"review page: {out / 'index.html'}" in stdout
    return out


@pytest.fixture
def page(browser: Browser, run_folder: Path) -> Iterator[tuple[Page, list[str]]]:
    """The page, loaded and with every image settled; the list collects console errors, page errors, dialogs."""
    pg = browser.new_page(viewport={"width": 1200, "height": 900})
    problems: list[str] = []
    pg.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    pg.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    pg.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
    pg.goto((run_folder / "index.html").as_uri())
    pg.mouse.wheel(0, 10_000)  # lazy images below the fold start loading
    pg.wait_for_function("[...document.images].filter(i => i.getAttribute('src')).every(i => i.complete)")
    pg.mouse.wheel(0, -10_000)
    yield pg, problems
    pg.close()


def _js(pg: Page, code: str, arg: Any = None) -> Any:
    return pg.evaluate(code, arg)


VISIBILITY = "sel => [...document.querySelectorAll(sel)].map(e => getComputedStyle(e).visibility)"
SHOWN = "sel => [...document.querySelectorAll(sel)].filter(e => e.getClientRects().length > 0).length"


def test_page_shows_every_job_decoded_without_errors(page: tuple[Page, list[str]], run_folder: Path) -> None:
    pg, problems = page
    records = jobs_log(run_folder)
    ok = sorted(r["outputs"]["image"] for r in records if r["status"] == "ok")
    failed = [r for r in records if r["status"] == "failed"]
    assert len(ok) == 3 and len(failed) == 1
    shown = _js(pg, """() => [...document.querySelectorAll('.job.ok img.base')].map(i => ({
        src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth,
        box: i.getBoundingClientRect().width}))""")
    assert sorted(s["src"] for s in shown) == ok
    assert all(s["ok"] and s["w"] == 56 and s["box"] > 0 for s in shown), shown
    outlines = _js(pg, "() => [...document.querySelectorAll('.job.ok img.outline')].map(i => i.naturalWidth)")
    assert outlines == [56] * 3  # one decoded outline per ok job, the image's size
    assert pg.inner_text("#n-ok") == "3" and pg.inner_text("#n-failed") == "1"
    card = pg.inner_text(".job.failed")
    assert EVIL in card and "target mask is empty" in card  # the file name is text, not an element
    assert _js(pg, "() => document.querySelectorAll('img[src=\"x\"]').length") == 0
    assert problems == []


def test_outline_toggle_hides_and_shows_every_outline(page: tuple[Page, list[str]]) -> None:
    pg, problems = page
    assert set(_js(pg, VISIBILITY, ".job img.outline")) == {"visible"}
    pg.click("#outline")
    assert set(_js(pg, VISIBILITY, ".job img.outline")) == {"hidden"}
    assert set(_js(pg, VISIBILITY, ".job img.base")) == {"visible"}
    pg.click("#outline")
    assert set(_js(pg, VISIBILITY, ".job img.outline")) == {"visible"}
    assert problems == []


def test_click_zooms_to_native_pixels_and_closes(page: tuple[Page, list[str]]) -> None:
    pg, problems = page
    pg.click(".job.ok .pic")
    pg.wait_for_selector("#zoom", state="visible")
    pg.wait_for_function("document.querySelector('#zoom img.base').naturalWidth > 0")
    sizes = _js(pg, """() => [...document.querySelectorAll('#zoom img')].map(i => {
        const r = i.getBoundingClientRect();
        return [i.naturalWidth, i.naturalHeight, r.width, r.height, getComputedStyle(i).visibility]; })""")
    assert _js(pg, "() => window.devicePixelRatio") == 1
    assert sizes == [[56, 40, 56, 40, "visible"]] * 2  # image and its outline, 1 image px = 1 screen px
    pg.click("#zoom .zoutline")  # the zoom has the toggle too (the overlay covers the header's)
    assert _js(pg, VISIBILITY, "#zoom img.outline") == ["hidden"]
    assert pg.is_visible("#zoom") and not pg.is_checked("#outline")  # one state for both
    pg.click("#zoom .zoutline")
    assert _js(pg, VISIBILITY, "#zoom img.outline") == ["visible"]
    pg.keyboard.press("Escape")
    assert not pg.is_visible("#zoom")
    pg.click(".job.ok .pic")
    assert pg.is_visible("#zoom")
    pg.mouse.click(600, 450)  # anywhere on the overlay closes it
    assert not pg.is_visible("#zoom")
    assert problems == []


def test_failed_only_filter(page: tuple[Page, list[str]]) -> None:
    pg, problems = page
    assert _js(pg, SHOWN, ".job") == 4
    pg.click("#failed-only")
    assert _js(pg, SHOWN, ".job.failed") == _js(pg, SHOWN, ".job") == 1
    assert _js(pg, SHOWN, "section") == 1  # the type without failures is out of the way too
    pg.click("#failed-only")
    assert _js(pg, SHOWN, ".job") == 4
    assert problems == []
