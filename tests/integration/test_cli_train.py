"""`defectgen train ...` through the CLI: one-line errors with exit code 2, dry runs, a tiny run end to end."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from defectgen.cli import app
from defectgen.data.procedural import make_dataset

runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "nuts"
    make_dataset(root, res=16, n_good=6, n_defect=2, n_test_good=1, seed=1)
    return root


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("defectgen: error:"), result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize(("option", "message"), [(["--steps", "0"], "--steps must be >= 1, got 0"),
                                                  (["--guide-weight", "2"], "--guide-weight must be within [0, 1]")])
def test_export_refuses_bad_run_defaults_before_loading(tmp_path, option, message):
    r = runner.invoke(app, ["export", "--gan", str(tmp_path / "nope"), "--encoder", str(tmp_path / "nope"),
                            "--out", str(tmp_path / "b"), *option])
    assert message in one_line_error(r)
    assert not (tmp_path / "b").exists()


def test_missing_data_folder(tmp_path):
    r = runner.invoke(app, ["train", "gan", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run")])
    assert "missing folder" in one_line_error(r)
    assert not (tmp_path / "run").exists()


def test_not_mvtec_layout(tmp_path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    r = runner.invoke(app, ["train", "gan", "--data", str(tmp_path / "flat"), "--out", str(tmp_path / "run")])
    assert "not an MVTec AD category" in one_line_error(r)


def test_bad_option_values(data, tmp_path):
    r = runner.invoke(app, ["train", "gan", "--data", str(data), "--out", str(tmp_path / "r"), "--res", "48"])
    assert "--res must be one of" in one_line_error(r)
    r = runner.invoke(app, ["train", "gan", "--data", str(data), "--out", str(tmp_path / "r"), "--augment", "flp"])
    assert "did you mean 'flip'" in one_line_error(r)


def test_encoder_needs_a_gan_run(data, tmp_path):
    r = runner.invoke(app, ["train", "encoder", "--data", str(data), "--gan", str(tmp_path), "--out",
                            str(tmp_path / "e")])
    assert "no checkpoint" in one_line_error(r)


def test_gan_dry_run_prints_resolved_config(data, tmp_path):
    r = runner.invoke(app, ["train", "gan", "--data", str(data), "--out", str(tmp_path / "r"), "--res", "64",
                            "--dry-run", "--channel-max", "32"])
    assert r.exit_code == 0, r.output
    cfg = json.loads(r.output)
    assert cfg["defect_types"] == ["good", "crack", "cut", "hole", "print"]
    assert cfg["generator"]["n_types"] == 5 and cfg["generator"]["channel_max"] == 32
    assert cfg["train_gan"]["res"] == 64 and not (tmp_path / "r").exists()


def test_tiny_gan_and_encoder_through_cli(data, tmp_path):
    gan = tmp_path / "gan"
    r = runner.invoke(app, ["train", "gan", "--data", str(data), "--out", str(gan), "--res", "16", "--kimg",
                            "0.008", "--batch", "4", "--channel-max", "8", "--channel-base", "64"])
    assert r.exit_code == 0, r.output
    assert (gan / "report.png").is_file()
    r = runner.invoke(app, ["train", "encoder", "--data", str(data), "--gan", str(gan), "--out",
                            str(tmp_path / "enc"), "--steps", "2", "--batch", "4", "--holdout", "0.3"])
    assert r.exit_code == 0, r.output
    assert "mask IoU" in r.output
    rep = json.loads((tmp_path / "enc" / "report.json").read_text())
    assert {"psnr_db", "mask_iou"} <= set(rep["held_out"])
    r = runner.invoke(app, ["train", "encoder", "--data", str(data), "--gan", str(gan), "--out",
                            str(tmp_path / "enc2"), "--steps", "1", "--batch", "4", "--holdout", "0.3",
                            "--init-from", str(tmp_path / "enc"), "--w-mask", "5"])
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "enc2" / "config.json").read_text())["train_encoder"]
    assert cfg["init_from"] == str(tmp_path / "enc") and cfg["w_mask"] == 5.0
    r = runner.invoke(app, ["train", "encoder", "--data", str(data), "--gan", str(gan), "--out",
                            str(tmp_path / "enc3"), "--steps", "1", "--batch", "4", "--init-from", str(gan)])
    assert "--init-from must be an encoder run" in one_line_error(r)
    r = runner.invoke(app, ["train", "gan", "--data", str(data), "--out", str(gan), "--res", "16"])
    assert "already holds a run" in one_line_error(r)


def test_train_help_lists_patch_mode_before_the_whole_part_alternative():
    r = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    names = [line.split()[1] for line in r.output.splitlines() if line.startswith("│ ") and len(line.split()) > 2
             and line.split()[1] in ("patch", "patch-encoder", "gan", "encoder")]
    assert names == ["patch", "patch-encoder", "gan", "encoder"], r.output
    assert "whole-part" in r.output.lower()
