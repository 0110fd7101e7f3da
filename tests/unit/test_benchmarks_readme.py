"""benchmarks/make_readme.py: a README that puts the current results first, stays short, stamps every result,
labels results of models no longer shipped, and links the findings journal instead of pasting it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import make_readme
import model_provenance as prov
import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results"


@pytest.fixture(scope="module")
def readme(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("readme") / "README.md"
    make_readme.main(["--out", str(out)])
    return out.read_text(encoding="utf-8")


def committed_results() -> dict[str, dict]:
    found = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(RESULTS.glob("*.json"))}
    return {name: res for name, res in found.items() if not res.get("quick") and res.get("machine")}


def test_readme_stays_under_its_line_budget(readme: str) -> None:
    assert len(readme.splitlines()) < make_readme.LINE_BUDGET == 300


def test_readme_leads_with_the_current_downstream_numbers(readme: str) -> None:
    res = json.loads((RESULTS / "downstream.json").read_text(encoding="utf-8"))
    s = res["summary"]
    headline = readme.index("## Current results")
    first_section = readme.index("## downstream")
    for source in ("defectgen", "copypaste", "real"):
        ap = s[source]["pixel_ap"]
        shown = f"{100 * ap['mean']:.1f} ± {100 * ap['std']:.1f}"
        assert headline < readme.index(shown) < first_section, source
    diff = 100 * (s["defectgen"]["pixel_ap"]["mean"] - s["copypaste"]["pixel_ap"]["mean"])
    assert f"defectgen − copypaste: {diff:+.1f} pixel-AP points" in readme
    assert res["machine"]["git"]["commit"] in readme[headline:first_section]


def test_every_result_is_linked_and_stamped_with_its_commit(readme: str) -> None:
    results = committed_results()
    assert "downstream" in results and "throughput" in results
    for name, res in results.items():
        assert f"](results/{name}." in readme, name
        assert res["machine"]["git"]["commit"] in readme, name


def test_results_of_models_no_longer_shipped_carry_the_label(readme: str) -> None:
    random_res = {s.name: s.random_res for s in make_readme.SECTIONS}
    for name, res in committed_results().items():
        label = prov.result_label(res, random_res.get(name))
        if label is not None:
            assert "no longer shipped" in label or "not the shipped model" in label
            assert f"*({label})*" in readme, name


def test_findings_journal_is_linked_never_pasted(readme: str) -> None:
    findings = (BENCH / "findings.md").read_text(encoding="utf-8").splitlines()
    headings = [line[3:] for line in findings if line.startswith("## ")]
    assert len(headings) > 5
    assert "](findings.md)" in readme
    assert [h for h in headings if h in readme] == []
    assert [line for line in findings if len(line) > 60 and line in readme] == []


def _bundle_history() -> list[tuple[str, str]]:
    out = subprocess.run(["git", "-C", str(ROOT), "log", "--reverse", "--format=%H %cI", "--", f"{prov.BUNDLE}/"
                          "manifest.json"], capture_output=True, text=True, check=True).stdout
    return [tuple(line.split()) for line in out.splitlines()]


def test_a_run_on_an_earlier_bundle_is_named_and_labelled() -> None:
    history, shipped = _bundle_history(), prov.shipped()
    assert history and shipped is not None
    first_commit, first_date = history[0]
    manifest = json.loads(subprocess.run(["git", "-C", str(ROOT), "show", f"{first_commit}:{prov.BUNDLE}/"
                                          "manifest.json"], capture_output=True, text=True, check=True).stdout)
    by_commit = prov.result_label({"machine": {"git": {"commit": first_commit}, "date_utc": first_date}})
    by_date = prov.result_label({"machine": {"git": {"commit": "0" * 12}, "date_utc": first_date}})
    if shipped.commit == first_commit:  # a history with one bundle: nothing earlier to label
        assert by_commit is None and by_date is None
    else:
        assert by_commit == by_date == (f"measured on the {prov.model_name(manifest)} of {first_date[:10]}, "
                                        "no longer shipped")
    assert prov.result_label({"machine": {"git": {"commit": shipped.commit}, "date_utc": None}}) is None


def test_random_weight_nets_are_never_the_shipped_model() -> None:
    label = prov.result_label({"graph": "/cache/bench/random128-0123abcd/step_wplus_b8.onnx", "machine": {}})
    assert label is not None and label.startswith("measured on random-weight 128 px whole-part nets, ")


def test_model_names_tell_patch_from_whole_part() -> None:
    assert prov.model_name({"resolution": 64}) == "whole-part 64 px model"
    assert prov.model_name({"resolution": 32, "patch": {"window": 32, "scale": 1.5}}) == \
        "patch model (32 px window, 1.5x scale)"
