"""Issue 8: downstream anomaly segmentation trained on synthetic defects, defectgen vs CutPaste, DRAEM-style and
copy-paste baselines (see `downstream/pipeline.py` for the protocol).

    python benchmarks/downstream.py --quick                 # CI smoke test, ~1 min
    python benchmarks/downstream.py                         # the full protocol on a procedural set
    python benchmarks/downstream.py --data mvtec/hazelnut   # a real MVTec AD category

Writes benchmarks/results/downstream.{json,md,png} and downstream_<source>.png (contact sheets).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helper package `downstream/` next to this file

from downstream.pipeline import parse_args, run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
