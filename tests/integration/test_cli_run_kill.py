"""Crash safety and the no-torch promise, in real subprocesses: kill -9 mid-run then resume; torch blocked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from cli_helpers import jobs_log, make_images, pngs

from defectgen.data.imageio import read_image, read_mask
from defectgen.data.mvtec import MVTecCategory

REPO = Path(__file__).resolve().parents[2]


def _cmd(bundle: Path, images: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "defectgen.cli", "run", "--bundle", str(bundle), "--images", str(images),
            "--random-masks", "2", "--batch", "1", "--steps", "30", "--out", str(out)]


def test_kill_9_mid_run_then_resume_gives_the_complete_set(tmp_path: Path, run_bundle: Callable[..., Path]) -> None:
    bundle, images, out = run_bundle(tmp_path / "bundle"), tmp_path / "images", tmp_path / "out"
    make_images(images, 20, h=24, w=32)
    proc = subprocess.Popen(_cmd(bundle, images, out), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = out / "jobs.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and log.read_bytes().count(b"\n") >= 3:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {proc.stderr.read()}"
    before = len(jobs_log(out))
    assert 3 <= before < 40
    for p in pngs(out):  # whatever exists after the kill is whole
        (read_mask if p.stem.endswith("_mask") else read_image)(p)

    done = subprocess.run(_cmd(bundle, images, out), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"{before} already done" in done.stdout
    records = jobs_log(out)
    counts = Counter(r["id"] for r in records)
    assert len(counts) == 40 and max(counts.values()) == 1  # complete, no duplicates
    assert {r["status"] for r in records} == {"ok"}
    cat = MVTecCategory(out, check_files=True)  # every PNG readable, every image has its mask
    assert len(cat.defective_items()) == 40 and len(cat.train_good()) == 20


def test_run_and_demo_work_with_torch_blocked(tmp_path: Path, run_bundle: Callable[..., Path],
                                             run_blocked: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    bundle, images = run_bundle(tmp_path / "bundle"), tmp_path / "images"
    make_images(images, 2)
    for args in (["run", "--bundle", bundle, "--images", images, "--random-masks", 1, "--out", tmp_path / "out"],
                 ["demo", "--bundle", bundle, "--out", tmp_path / "demo"]):
        r = run_blocked(f"sys.argv = ['defectgen', *{[str(a) for a in args]!r}]\n"
                        "from defectgen.cli import main\nmain()\n", report=True)
        assert r.returncode == 0, r.stderr
        assert r.stderr.strip().endswith("torch-free"), r.stderr
    assert len(jobs_log(tmp_path / "out")) == 2 and (tmp_path / "demo" / "contact_sheet.png").is_file()
