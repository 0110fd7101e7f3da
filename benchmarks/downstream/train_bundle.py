"""`--train-budget`: train and export a whole-part bundle on the held-in split only, within a time budget, and
write its provenance file (so the defectgen row is fair by construction).

`defectgen train gan`, `train encoder` and `export` run as subprocesses (the CLI a user would run). Training
commands take a length (kimg, steps), not a time, so each one runs as a short calibration chunk, then one
`--resume` chunk sized from the measured rate to fill its share of the budget: GAN 65 %, encoder 25 %, the
export takes what it takes (about the last 10 %).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .bundle_info import write_provenance

GAN_SHARE, ENCODER_SHARE = 0.65, 0.25
GAN_BATCH, ENCODER_BATCH = 16, 16
CALIBRATION_STEPS = 20


def _cli(args: list[str], log: Path, commands: list[str] | None = None) -> float:
    """Run `python -m defectgen.cli ARGS`, appending its output to `log`; returns seconds.

    Raises:
        RuntimeError: non-zero exit (with the log's tail).
    """
    cmd = [sys.executable, "-m", "defectgen.cli", *args]
    if commands is not None:
        commands.append("defectgen " + " ".join(args))
    t0 = time.perf_counter()
    with log.open("a", encoding="utf-8") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False).returncode
    if code != 0:
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:])
        raise RuntimeError(f"`defectgen {' '.join(args[:2])}` failed (exit {code}); see {log}:\n{tail}")
    return time.perf_counter() - t0


def _budgeted(run_steps: Callable[[int, bool], float], budget_s: float, log_notes: list[str], what: str) -> int:
    """Calibrate with CALIBRATION_STEPS, then resume up to the step count that fills `budget_s`."""
    first = run_steps(CALIBRATION_STEPS, False)
    per_step = first / CALIBRATION_STEPS  # includes start-up: errs on the short side
    total = CALIBRATION_STEPS + max(0, int(0.9 * (budget_s - first) / per_step))
    if total > CALIBRATION_STEPS:
        run_steps(total, True)
    log_notes.append(f"{what}: {total} steps ({first:.0f} s for the first {CALIBRATION_STEPS})")
    return total


def train_bundle(held_in: Path, work: Path, *, minutes: float, res: int = 64, seed: int = 0,
                 log: list[str] | None = None, trained_on: str = "train/good + held-in defects") -> Path:
    """Train a GAN + encoder on `held_in` (MVTec layout) for about `minutes`, export, return the bundle folder.

    The bundle gets a provenance file naming `trained_on`, the commands run and the wall time.
    """
    work.mkdir(parents=True, exist_ok=True)
    notes = log if log is not None else []
    logf = work / "train.log"
    gan, enc, bundle = work / "gan", work / "encoder", work / "bundle"
    budget = minutes * 60.0
    model_res = 64 if res <= 64 else 128
    commands: list[str] = []

    def gan_steps(steps: int, resume: bool) -> float:
        kimg = steps * GAN_BATCH / 1000
        return _cli(["train", "gan", "--data", str(held_in), "--out", str(gan), "--res", str(model_res),
                     "--kimg", f"{kimg:g}", "--batch", str(GAN_BATCH), "--seed", str(seed),
                     "--sample-every", "100000", "--ckpt-every", "100000", *(["--resume"] if resume else [])],
                    logf, commands)

    def enc_steps(steps: int, resume: bool) -> float:
        return _cli(["train", "encoder", "--data", str(held_in), "--gan", str(gan), "--out", str(enc),
                     "--steps", str(steps), "--batch", str(ENCODER_BATCH), "--seed", str(seed),
                     "--sample-every", "100000", "--ckpt-every", "100000", *(["--resume"] if resume else [])],
                    logf, commands)

    t0 = time.perf_counter()
    _budgeted(gan_steps, GAN_SHARE * budget, notes, f"GAN at {model_res} px")
    _budgeted(enc_steps, ENCODER_SHARE * budget, notes, "encoder")
    t_export = _cli(["export", "--gan", str(gan), "--encoder", str(enc), "--out", str(bundle), "--data",
                     str(held_in), "--spaces", "wplus", "--batch", "8", "--no-verify"], logf, commands)
    seconds = time.perf_counter() - t0
    notes.append(f"--train-budget: trained + exported in {seconds:.0f} s (export {t_export:.0f} s) "
                 f"for a {minutes:g} min budget")
    write_provenance(bundle, trained_on=trained_on, train_command=" && ".join(commands), train_seconds=seconds)
    return bundle
