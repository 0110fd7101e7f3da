"""`defectgen train patch` -> `defectgen export --patch` -> `defectgen run` through the CLI, at toy size.

The export runs with its parity check (the default), so the bundle a patch run yields is verified against torch
and finite differences on random and real windows; `run` then inverts through it with the torch-free runtime.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import invoke, jobs_log

from defectgen.data.imageio import read_image
from defectgen.data.mvtec import MVTecCategory
from defectgen.export.bank import crop_defect
from defectgen.runtime.bundle import Bundle

pytestmark = pytest.mark.slow
P = 16


def _one_line_error(code: int, out: str, err: str) -> str:
    lines = [x for x in (out + err).splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("defectgen: error:"), (code, out, err)
    return lines[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_patch")
    code, out, err = invoke("make-data", root / "data", "--res", 48, "--n-good", 4, "--n-defect", 3,
                            "--n-test-good", 1, "--seed", 0)
    assert code == 0, err
    code, out, err = invoke("train", "patch", "--data", root / "data", "--out", root / "run", "--window", P,
                            "--steps", 2, "--batch", 4, "--held-in", 1, "--seed", 0)
    assert code == 0, out + err
    return root / "run"


def _train_and_export(data, tmp_path, *train_options) -> Bundle:
    """A 2-step toy run with `train_options`, exported with the parity check; the check must pass."""
    code, out, err = invoke("train", "patch", "--data", data, "--out", tmp_path / "run", "--window", P,
                            "--steps", 2, "--batch", 4, "--held-in", 1, "--seed", 0, *train_options)
    assert code == 0, out + err
    code, out, err = invoke("export", "--patch", tmp_path / "run", "--out", tmp_path / "bundle", "--spaces",
                            "wplus", "--batch", 2, "--steps", 2)
    assert code == 0, out + err
    assert json.loads((tmp_path / "bundle" / "verify.json").read_text())["passed"]
    return Bundle.load(tmp_path / "bundle")


def test_full_design_trains_exports_and_runs(run_dir, tmp_path):
    """`train patch --design full`: a G that draws the whole window; the bundle records the design, its
    synthesis graph still takes the good window (the step graph's background term needs it), and `run` pastes
    G's own pixels where its mask is on."""
    import onnx

    data = run_dir.parent / "data"
    b = _train_and_export(data, tmp_path, "--design", "full")
    assert b.manifest.patch.design == "full" and b.patch_design == "full"
    synthesis = onnx.load(tmp_path / "bundle" / "synthesis_wplus.onnx")
    assert [i.name for i in synthesis.graph.input] == ["latent", "good"]
    code, out, err = invoke("run", "--bundle", tmp_path / "bundle", "--mvtec", data, "--random-masks", 1,
                            "--types", "crack,hole", "--steps", 2, "--out", tmp_path / "out", "--seed", 0,
                            "--mask-shape", "generated", "--mask-mode", "generated")
    assert code == 0, out + err
    assert all(j["status"] == "ok" for j in jobs_log(tmp_path / "out"))


def test_train_export_run_round_trip(run_dir, tmp_path):
    """train -> export (no encoder, the parity check on) -> run, with a non-default G: `--colour-head wide`, whose
    bound travels in the saved G config into the bundle and through the parity check's scaled tanh (one trained
    run serves both checks: training and export dominate this file's time)."""
    data = run_dir.parent / "data"
    b = _train_and_export(data, tmp_path, "--colour-head", "wide")  # --data defaults to the run's training data
    m = b.manifest
    assert m.configs["patch_generator"]["colour_tanh"] and m.configs["patch_generator"]["colour_bound"] == 1.2
    assert m.patch is not None and (m.patch.window, m.patch.scale) == (P, 1.0) and m.resolution == P
    assert not b.has_encoder and m.defaults.init == "wavg" and m.defaults.steps == 2
    assert m.default_lambdas["dom"] == 0.0
    assert m.configs["held_in"] == json.loads((tmp_path / "run" / "held_in.json").read_text())
    held_in, cat = m.configs["held_in"], MVTecCategory(data)
    for t in m.defect_types[1:]:  # one held-in image per type -> one crop, cut at the data's own scale
        (img, _), = b.bank(t)
        item, = (it for it in cat.defective_items([t]) if it.image_path.name in held_in[t])
        assert read_image(img).shape == crop_defect(*item.load(), max_side=None)[0].shape

    code, out, err = invoke("run", "--bundle", tmp_path / "bundle", "--mvtec", data, "--random-masks", 1,
                            "--types", "crack,hole", "--steps", 2, "--out", tmp_path / "out", "--seed", 0)
    assert code == 0, out + err
    jobs = jobs_log(tmp_path / "out")
    assert jobs and all(j["status"] == "ok" for j in jobs)
    assert all(j["init"] == "wavg" and j["final_terms"]["dom"] == 0.0 for j in jobs)
    assert all(np.isfinite(j["objective"]).all() for j in jobs)


def test_export_needs_exactly_one_model_kind(run_dir, tmp_path):
    line = _one_line_error(*invoke("export", "--out", tmp_path / "b"))
    assert "--gan and --encoder" in line and "--patch" in line
    line = _one_line_error(*invoke("export", "--patch", run_dir, "--gan", run_dir, "--out", tmp_path / "b"))
    assert "either" in line
    line = _one_line_error(*invoke("export", "--gan", run_dir, "--out", tmp_path / "b"))
    assert "--encoder" in line
    assert not (tmp_path / "b").exists()


def test_export_patch_encoder_must_be_an_encoder_run(run_dir, tmp_path):
    line = _one_line_error(*invoke("export", "--patch", run_dir, "--encoder", run_dir, "--out", tmp_path / "b"))
    assert "not an encoder run" in line and not (tmp_path / "b").exists()


def test_export_patch_refuses_a_folder_without_a_run(tmp_path):
    (tmp_path / "empty").mkdir()
    line = _one_line_error(*invoke("export", "--patch", tmp_path / "empty", "--out", tmp_path / "b"))
    assert "checkpoint" in line
