"""One writer per output folder: `flock` locks on hidden files in OUT, taken before anything is written there.

Two unsharded runs into one OUT would both do every job. So an unsharded run holds `OUT/.defectgen.lock`
exclusively, and shard k/n holds it shared plus `OUT/.defectgen.shard-k-of-n.lock` exclusively: the shards of
one set run side by side, while a second copy of a shard, or an unsharded run beside anything, is refused.

A lock file holds its holder's record (pid, host, shard, start time; JSON), written after the lock is taken and
emptied on a clean release. The kernel drops a `flock` when its process dies, so a `kill -9` leaves no lock,
only its record: a run that gets the lock and finds a record there took over from a run that ended without
releasing, and says so. Records are rewritten in place, never replaced, because a lock belongs to the inode.

Without `fcntl` (Windows) there is no lock and runs into one OUT are not guarded; where the filesystem cannot
`flock`, the run goes on unguarded and says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from defectgen.errors import DataError

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".defectgen.lock"
_SHARD_GLOB = ".defectgen.shard-*-of-*.lock"


def shard_lock_file(shard: tuple[int, int]) -> str:
    """`.defectgen.shard-k-of-n.lock`: the file that only one run of shard k/n may hold."""
    return f".defectgen.shard-{shard[0]}-of-{shard[1]}.lock"


def describe(record: dict[str, Any]) -> str:
    """`pid 1234 on host x, shard 0/1, since 2024-05-01 12:03:04` ("?" for what the record lacks)."""
    since = str(record.get("since", "?")).replace("T", " ")
    return (f"pid {record.get('pid', '?')} on host {record.get('host', '?')}, shard {record.get('shard', '?')}, "
            f"since {since}")


def _parse(data: bytes) -> dict[str, Any] | None:
    """A lock file's record: None when empty (free, or released cleanly), `{}` when unreadable."""
    if not data.strip():
        return None
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def _read_fd(fd: int) -> dict[str, Any] | None:
    return _parse(os.pread(fd, 1 << 16, 0))


def _read_path(path: Path) -> dict[str, Any] | None:
    try:
        return _parse(path.read_bytes())
    except OSError:
        return None


def _alive(pid: object) -> bool:
    """Whether a process with this pid exists here (only called where fcntl exists, i.e. not on Windows)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


class OutLock:
    """The locks one run holds on its output folder; `acquire` takes them, `release` (or `with`) drops them.

    Attributes:
        notices: one-line messages for the user: a takeover from a run that ended without releasing, or a
            filesystem that cannot lock.
        record: what this run wrote into its lock file (with `took_over` naming the previous holder, if any).
    """

    def __init__(self, out: Path, shard: tuple[int, int] = (0, 1)) -> None:
        self.out, self.shard = out, shard
        self.notices: list[str] = []
        self.record: dict[str, Any] = {}
        self._held: list[tuple[int, bool]] = []  # (fd, exclusive), in the order taken

    @classmethod
    def acquire(cls, out: Path, shard: tuple[int, int] = (0, 1)) -> OutLock:
        """Lock `out` (an existing folder) for one run of `shard`; write nothing else.

        Raises:
            DataError: another run holds a conflicting lock (one line naming it), or a lock file cannot be opened.
        """
        lock = cls(out, shard)
        if fcntl is None:
            return lock
        sharded = shard[1] > 1
        wanted = [(out / LOCK_FILE, not sharded)] + ([(out / shard_lock_file(shard), True)] if sharded else [])
        try:
            for path, exclusive in wanted:
                fd = _open(path)
                try:
                    fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    msg = (f"output folder {out} is in use by another defectgen run ({lock._holder(path)}); "
                           f"wait for it or use another --out")
                    raise DataError(msg) from None
                except OSError as e:  # e.g. a network filesystem without flock
                    os.close(fd)
                    lock.release()
                    lock.notices.append(f"output folder {out} cannot be locked ({e.strerror or e}); "
                                        f"make sure no other defectgen run writes into it")
                    return lock
                lock._held.append((fd, exclusive))
            lock._claim()
        except BaseException:
            lock.release()
            raise
        return lock

    def _claim(self) -> None:
        """Write this run's record into the file it holds exclusively; note (and clear) a dead holder's record."""
        self.record = {"pid": os.getpid(), "host": socket.gethostname(), "shard": f"{self.shard[0]}/{self.shard[1]}",
                       "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        for fd, exclusive in self._held:
            old = _read_fd(fd)
            if old is not None:  # the lock was free but the record stayed: its run ended without releasing
                self.notices.append(f"took over output folder {self.out} from a defectgen run that ended without "
                                    f"releasing it ({describe(old)})")
                self.record.setdefault("took_over", old)
            if not exclusive:  # the shared main lock: only an unsharded run writes it, so that record is stale
                if old is not None:
                    os.ftruncate(fd, 0)
                continue
            data = (json.dumps(self.record) + "\n").encode("utf-8")
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)

    def _holder(self, path: Path) -> str:
        """Who holds `path`: its record, or for the main lock held shared, a running shard's record."""
        record = _read_path(path)
        if record is None and path.name == LOCK_FILE:
            shards = [r for p in sorted(self.out.glob(_SHARD_GLOB)) if (r := _read_path(p)) is not None]
            here = socket.gethostname()
            live = [r for r in shards if r.get("host") != here or _alive(r.get("pid"))]
            record = (live or shards or [None])[0]
        return describe(record) if record else "its record is not written yet"

    def release(self) -> None:
        """Empty this run's record (a clean release) and drop the locks; safe to call twice."""
        for fd, exclusive in reversed(self._held):
            with contextlib.suppress(OSError):
                if exclusive:
                    os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)  # explicit: a forked child may share the descriptor
            os.close(fd)
        self._held = []

    def __del__(self) -> None:  # a lock dropped without `release` (like a file object) still frees the folder
        with contextlib.suppress(Exception):
            self.release()

    @property
    def held(self) -> bool:
        return bool(self._held)

    def __enter__(self) -> OutLock:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def _open(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        msg = f"lock file {path} cannot be opened: {e.strerror or e}"
        raise DataError(msg) from None
