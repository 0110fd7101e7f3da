"""Another process that holds an output folder's lock until killed, for the one-writer tests.

As a script: `python tests/lock_holder.py OUT folder|lock K N`; `folder` opens a `RunFolder` (lock + run.json),
`lock` takes only the lock; it prints `ready` once it holds it. `start_holder` starts it and waits for that.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def start_holder(out: Path, mode: str = "folder", shard: tuple[int, int] = (0, 1)) -> subprocess.Popen[str]:
    """Start the holder on `out` and return once it holds the lock (kill it with `proc.kill()` + `proc.wait()`)."""
    proc = subprocess.Popen([sys.executable, __file__, str(out), mode, str(shard[0]), str(shard[1])], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise AssertionError(f"lock holder did not start: {line}{proc.communicate()[1]}")
    return proc


def main() -> None:
    from defectgen.runtime.jobs.out_lock import OutLock
    from defectgen.runtime.jobs.run_folder import RunFolder

    out, mode, shard = Path(sys.argv[1]), sys.argv[2], (int(sys.argv[3]), int(sys.argv[4]))
    if mode == "folder":
        held: object = RunFolder.open(out, {"holder": True}, {}, shard=shard)
    else:
        out.mkdir(parents=True, exist_ok=True)
        held = OutLock.acquire(out, shard)
    print("ready", flush=True)
    time.sleep(600)
    del held


if __name__ == "__main__":
    main()
