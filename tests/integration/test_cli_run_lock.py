"""`defectgen run` keeps one writer per output folder, end to end: refused while another process holds OUT
(exit 2, one line naming it, nothing written), a lock left by `kill -9` taken over, shards side by side."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_helpers import invoke, jobs_log, make_images
from lock_holder import REPO, start_holder

from defectgen.data.mvtec import MVTecCategory
from defectgen.runtime.jobs.out_lock import LOCK_FILE


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, run_bundle: Callable[..., Path]) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("lock")
    make_images(root / "images", 2, h=24, w=32)
    return run_bundle(root / "bundle"), root / "images"


def _args(inputs: tuple[Path, Path], out: Path, *extra: object) -> list[str]:
    bundle, images = inputs
    return [str(a) for a in ("run", "--bundle", bundle, "--images", images, "--random-masks", 2, "--steps", 3,
                             "--out", out, *extra)]


def _error_line(stderr: str) -> str:
    lines = [x for x in stderr.splitlines() if x.startswith("defectgen: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_run_is_refused_while_another_process_writes_the_folder(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    holder = start_holder(out, "folder")
    try:
        before = _listing(out)
        done = subprocess.run([sys.executable, "-m", "defectgen.cli", *_args(inputs, out)], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert re.fullmatch(rf"defectgen: error: output folder {re.escape(str(out))} is in use by another "
                            rf"defectgen run \(pid {holder.pid} on host [^,]+, shard 0/1, since "
                            r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\); wait for it or use another --out",
                            _error_line(done.stderr)), done.stderr
        assert _listing(out) == before  # nothing written, the holder's run.json untouched
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_kill_9_is_taken_over(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    holder = start_holder(out, "lock")
    holder.kill()  # SIGKILL while holding: its record stays in the lock file
    holder.wait()
    code, _, stderr = invoke(*_args(inputs, out))
    assert code == 0, stderr
    assert (f"defectgen: took over output folder {out} from a defectgen run that ended without releasing it "
            f"(pid {holder.pid} on host ") in stderr
    assert len(jobs_log(out)) == 4 and {r["status"] for r in jobs_log(out)} == {"ok"}
    assert (out / LOCK_FILE).read_bytes() == b""  # released cleanly at the end
    assert len(MVTecCategory(out, check_files=True).defective_items()) == 4  # hidden lock files: no reader minds
    code, _, stderr = invoke(*_args(inputs, out))
    assert code == 0 and "took over" not in stderr


def test_shards_run_side_by_side_but_not_beside_an_unsharded_run(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    holder = start_holder(out, "lock", (0, 2))
    try:
        code, _, stderr = invoke(*_args(inputs, out, "--shard", "1/2"))
        assert code == 0, stderr
        assert sorted(r["index"] for r in jobs_log(out)) == [1, 3]
        for extra in ((), ("--shard", "0/2")):
            code, _, stderr = invoke(*_args(inputs, out, *extra))
            assert code == 2
            assert f"is in use by another defectgen run (pid {holder.pid} on host " in _error_line(stderr)
            assert ", shard 0/2, since " in _error_line(stderr)
        assert len(jobs_log(out)) == 2
    finally:
        holder.kill()
        holder.wait()
