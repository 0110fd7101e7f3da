"""Downstream benchmark: the markdown states fairness, mean ± std and whether a difference is resolved."""

from __future__ import annotations

import pytest
from downstream import report

METRICS = ("pixel_ap", "pixel_auroc", "f1_max", "image_auroc")


def _entry(ap: float, std: float, n: int = 3) -> dict:
    m = {k: {"mean": ap, "std": std, "n": n} for k in METRICS}
    return {**m, "per_type_ap": {"hole": ap}, "diversity": 0.1, "memorisation": 0.02, "alignment": 0.5}


def _results(fair: bool) -> dict:
    summary = {"defectgen": _entry(0.90, 0.01), "defectgen_g1": _entry(0.90, 0.01), "copypaste": _entry(0.80, 0.01),
               "real": _entry(0.91, 0.02)}
    bundle = {"path": "/b", "trained_on": "held-in" if fair else None, "train_command": None,
              "train_seconds": 60.0 if fair else None, "fair": fair, "how": "given",
              "not_fair_because": None if fair else "no provenance.json", "run_defaults": {"guide_weight": 1.0}}
    data = {"name": "toy", "held_out_defects": 12, "test_good": 2, "resolution": 32, "types": ["hole"]}
    protocol = {"version": 2, "seeds": [0, 1, 2], "data": data, "defectgen_bundle": bundle,
                "same_as": {"defectgen_g1": "defectgen"}, "segmenter": {"res": 32, "steps": 5},
                "held_in_rule": "first third", "held_in_per_type": {"hole": 2}, "n_synthetic": 4,
                "generation_seed": 0, "jobs": 1}
    return {"mode": "full", "quick": False, "command": "python x", "machine_line": "box", "summary": summary,
            "sources": {}, "protocol": protocol, "timing": {"total_s": 1.0}, "notes": [],
            "reference": {"held_out_real": {"diversity": 0.2, "memorisation": 0.05}, "crop_px": 40,
                          "alignment_threshold": 0.5}}


def test_comparisons_state_the_difference_and_its_standard_error() -> None:
    lines = report.comparisons(_results(True)["summary"])
    assert lines[0].startswith("defectgen − copypaste: +10.0 pixel-AP points (SE 0.8; beyond 2 SE")
    assert "defectgen − defectgen_g1: +0.0" in lines[1] and "not resolved" in lines[1]
    assert any(line.startswith("real − copypaste") for line in lines)
    one_seed = {k: _entry(v, 0.0, n=1) for k, v in (("defectgen", 0.9), ("copypaste", 0.8))}
    assert report.comparisons(one_seed) == ["defectgen − copypaste: +10.0 pixel-AP points (one seed: no spread to "
                                            "judge it by)"]


@pytest.mark.parametrize("fair", [True, False])
def test_markdown_labels_fairness_aliases_and_spread(fair: bool) -> None:
    md = report.markdown(_results(fair))
    assert "90.0 ± 1.0" in md and "(n=3)" in md and "defectgen_g1" in md and "= defectgen" in md
    assert ("NOT FAIR" in md) is (not fair) and ("defectgen (not fair)" in md) is (not fair)
    assert ("**fair**" in md) is fair and "copypaste (not fair)" not in md
    assert "| *held-out real defects (reference, not trained on)* |" in md
