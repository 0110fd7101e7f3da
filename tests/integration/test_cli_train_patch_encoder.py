"""`defectgen train patch-encoder` end to end at toy size: checkpoint, log, samples, report; resume; errors."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from defectgen.cli import app
from defectgen.data.procedural import make_dataset
from defectgen.training.checkpoint import read_checkpoint
from defectgen.training.config import TrainPatchConfig
from defectgen.training.patch_gan import train_patch

runner = CliRunner()
P = 16


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_penc")
    data = root / "nuts"
    make_dataset(data, res=48, n_good=4, n_defect=4, n_test_good=2, seed=3)
    train_patch(TrainPatchConfig(data=str(data), window=P, steps=2, batch=4, per_defect=2, per_good=2, log_every=1,
                                 sample_every=2, ckpt_every=2, grid_per_type=2), root / "patch", tiny=True,
                progress=False)
    return data, root / "patch"


def invoke(data, patch, out, *extra):
    return runner.invoke(app, ["train", "patch-encoder", "--data", str(data), "--patch", str(patch), "--out", str(out),
                               *extra])


def test_cli_writes_checkpoint_log_samples_and_report(setup, tmp_path):
    data, patch = setup
    out = tmp_path / "enc"
    r = invoke(data, patch, out, "--steps", "2", "--batch", "4", "--sample-every", "1")
    assert r.exit_code == 0, r.output
    assert "mask IoU" in r.output
    for name in ("checkpoint.safetensors", "config.json", "log.jsonl", "report.json", "report.png",
                 "samples/000001.png", "samples/000002.png"):
        assert (out / name).is_file(), name
    rep = json.loads((out / "report.json").read_text())
    assert rep["step"] == 2 and rep["held_out"]["real"]["n"] > 0
    assert rep["held_out_images"]["hole"] == ["002.png", "003.png"]  # held in: the first ceil(4 / 3) = 2
    assert {"encoder", "w_avg"} <= set(rep["held_out"]["g_samples"])
    ck = read_checkpoint(out)
    assert ck.meta["kind"] == "patch_encoder" and ck.configs["encoder"]["res"] == P
    assert ck.meta["patch"]["step"] == 2
    # a second run into the same folder needs --resume; --resume extends it
    r = invoke(data, patch, out, "--steps", "3")
    assert r.exit_code == 2 and "--resume" in r.output
    r = invoke(data, patch, out, "--steps", "3", "--resume")
    assert r.exit_code == 0, r.output
    assert read_checkpoint(out).step == 3


@pytest.mark.parametrize(("which", "extra", "message"), [("gan", [], "--patch must be a `train patch` run"),
                                                          ("patch", ["--batch", "1"], "--batch >= 2"),
                                                          ("missing", [], "no checkpoint at")])
def test_cli_bad_input_is_one_line(setup, tmp_path, which, extra, message):
    data, patch = setup
    if which == "gan":  # any non-patch checkpoint: an encoder run of this command
        enc = tmp_path / "enc"
        assert invoke(data, patch, enc, "--steps", "1", "--batch", "2").exit_code == 0
        patch = enc
    elif which == "missing":
        patch = tmp_path / "nothing"
    r = invoke(data, patch, tmp_path / "out", *extra)
    assert r.exit_code == 2, r.output
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("defectgen: error:") and message in lines[0], r.output


def test_slim_copies_of_a_patch_run_and_its_encoder_export_like_the_runs(setup, tmp_path):
    """What `models/default/` ships: nets only (patch G_ema + D, the encoder's E), the held-in list beside G."""
    from defectgen.export.patch import load_patch_run
    from defectgen.training.checkpoint import load_encoder
    from defectgen.training.slim import export_slim

    data, patch = setup
    assert invoke(data, patch, tmp_path / "enc", "--steps", "2", "--batch", "4").exit_code == 0
    export_slim(patch, tmp_path / "slim_g")
    export_slim(tmp_path / "enc", tmp_path / "slim_e")
    assert {k.split(".")[0] for k in read_checkpoint(tmp_path / "slim_g").tensors} == {"G_ema", "D"}
    assert {k.split(".")[0] for k in read_checkpoint(tmp_path / "slim_e").tensors} == {"E"}
    assert (tmp_path / "slim_g" / "held_in.json").read_bytes() == (patch / "held_in.json").read_bytes()
    run, slim = load_patch_run(patch), load_patch_run(tmp_path / "slim_g")
    assert slim.held_in == run.held_in and slim.patch == run.patch
    assert all(torch.equal(a, b) for a, b in zip(run.G.state_dict().values(), slim.G.state_dict().values(),
                                                  strict=True))
    e_run, e_slim = load_encoder(tmp_path / "enc"), load_encoder(tmp_path / "slim_e")
    assert all(torch.equal(a, b) for a, b in zip(e_run.state_dict().values(), e_slim.state_dict().values(),
                                                  strict=True))
