"""One writer per output folder: a second writer is refused naming the holder, a lock left by `kill -9` is taken
over, shards share a folder but not a shard, and the hidden lock files keep the folder rules intact."""

from __future__ import annotations

import errno
import json
import os
import socket
from pathlib import Path

import pytest
from lock_holder import start_holder

from defectgen.errors import DataError
from defectgen.runtime.jobs import out_lock
from defectgen.runtime.jobs.out_lock import LOCK_FILE, OutLock, shard_lock_file
from defectgen.runtime.jobs.run_folder import RUN_FILE, RunFolder, open_run, sweep_temp_files


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def _refused(out: Path, shard: tuple[int, int] = (0, 1)) -> str:
    with pytest.raises(DataError) as info:
        RunFolder.open(out, {"seed": 0}, {}, shard=shard)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"output folder {out} is in use by another defectgen run (pid ")
    assert message.endswith("); wait for it or use another --out")
    return message


def test_a_second_writer_is_refused_before_run_json_and_names_the_holder(tmp_path: Path) -> None:
    out = tmp_path / "new"
    out.mkdir()
    with OutLock.acquire(out):  # a brand-new folder, locked before its run.json exists
        before = _listing(out)
        message = _refused(out)
        assert f"(pid {os.getpid()} on host {socket.gethostname()}, shard 0/1, since " in message
        assert _listing(out) == before and not (out / RUN_FILE).exists()
    first = RunFolder.open(out, {"seed": 0}, {})
    _refused(out)  # a second RunFolder in the same process is a second writer too
    first.close()
    with RunFolder.open(out, {"seed": 0}, {}) as again:  # released: the next run opens it, no takeover
        assert again.resumed and again.lock is not None and again.lock.held and again.lock.notices == []
    assert (out / LOCK_FILE).read_bytes() == b""  # a clean release empties the record


def test_holder_in_another_process_then_killed_is_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "out"
    holder = start_holder(out, "folder")
    try:
        assert f"(pid {holder.pid} on host {socket.gethostname()}, shard 0/1, since " in _refused(out)
    finally:
        holder.kill()  # SIGKILL: the kernel drops its lock, its record stays
        holder.wait()
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == holder.pid
    notices: list[str] = []
    with RunFolder.open(out, {"holder": True}, {}, echo=notices.append) as folder:
        assert folder.resumed
        assert len(notices) == 1 and notices[0].startswith(f"defectgen: took over output folder {out} from a "
                                                           f"defectgen run that ended without releasing it (pid "
                                                           f"{holder.pid} on host ")
        record = json.loads((out / LOCK_FILE).read_text())
        assert record["pid"] == os.getpid() and record["took_over"]["pid"] == holder.pid
    assert (out / LOCK_FILE).read_bytes() == b""


def test_shards_share_a_folder_but_not_a_shard(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = RunFolder.open(out, {"seed": 0}, {}, shard=(0, 2))
    second = RunFolder.open(out, {"seed": 0}, {}, shard=(1, 2))  # side by side
    try:
        assert first.lock is not None and second.lock is not None and first.lock.held and second.lock.held
        assert ", shard 0/2, since " in _refused(out, (0, 2))
        assert ", shard 0/2, since " in _refused(out)  # an unsharded run names a running shard
        first.close()
        assert ", shard 1/2, since " in _refused(out)
    finally:
        first.close()
        second.close()
    with RunFolder.open(out, {"seed": 0}, {}):
        assert ", shard 0/1, since " in _refused(out, (1, 2))  # and no shard beside an unsharded run
    assert {p.name for p in out.iterdir()} == {RUN_FILE, LOCK_FILE, shard_lock_file((0, 2)),
                                               shard_lock_file((1, 2))}


def test_a_killed_shard_is_taken_over_by_its_next_run_only(tmp_path: Path) -> None:
    out = tmp_path / "out"
    holder = start_holder(out, "lock", (1, 2))
    try:
        with OutLock.acquire(out, (0, 2)) as other:  # another shard: no takeover
            assert other.notices == []
        assert ", shard 1/2, since " in _refused(out, (1, 2))
    finally:
        holder.kill()
        holder.wait()
    with OutLock.acquire(out, (1, 2)) as lock:
        assert len(lock.notices) == 1 and f"pid {holder.pid} " in lock.notices[0]
        assert lock.record["took_over"]["shard"] == "1/2"


def test_lock_files_are_hidden_from_the_folder_rules(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for shard in ((0, 1), (0, 2)):
        OutLock.acquire(out, shard).release()
    assert open_run(out, {"seed": 0}, {}) is False  # only hidden files: still an empty folder, not a foreign one
    assert sweep_temp_files(out, older_than_s=-1) == 0
    assert (out / LOCK_FILE).is_file() and (out / shard_lock_file((0, 2))).is_file()


def test_without_fcntl_there_is_no_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(out_lock, "fcntl", None)
    out = tmp_path / "out"
    with RunFolder.open(out, {"seed": 0}, {}) as a, RunFolder.open(out, {"seed": 0}, {}) as b:
        assert a.lock is not None and b.lock is not None and not a.lock.held and not b.lock.held
    assert not (out / LOCK_FILE).exists()


def test_a_filesystem_without_flock_runs_unguarded_with_a_notice(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import fcntl

    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    notices: list[str] = []
    with RunFolder.open(tmp_path / "out", {"seed": 0}, {}, echo=notices.append) as folder:
        assert folder.lock is not None and not folder.lock.held
    assert len(notices) == 1 and "cannot be locked" in notices[0]
