"""Downstream anomaly segmentation trained on synthetic defects: can the data tell a generator from copy-paste?

Few-shot and fair: 18 real defects per type, the first third held in (what a generator, the copy-paste bank and
the `real` reference row may use), the rest held out for evaluation; every source is scored with several
segmenter seeds (mean ± std), plus diversity, memorisation and mask-appearance alignment in the feature space of a
segmenter trained on the real held-in defects. Protocol: `downstream/pipeline.py`; figures: `downstream/features.py`;
fairness of the defectgen bundle (its provenance.json): `downstream/bundle_info.py`.

    python benchmarks/downstream.py --jobs 2                 # the full protocol with the embedded default bundle
    python benchmarks/downstream.py --bundle B --jobs 2      # the same with another bundle B (trained on held-in data)
    python benchmarks/downstream.py --quick                  # CI smoke test, about a minute, not fair
    python benchmarks/downstream.py --validate --bundle B    # tuning: never reads the held-out defects

Writes downstream.{json,md,png} and downstream_<source>.png contact sheets to --out (default benchmarks/results;
quick, validation and not-fair runs go to a subfolder).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helper package `downstream/` next to this file

from downstream.pipeline import parse_args, run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    run(parse_args(argv, __doc__ or ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
