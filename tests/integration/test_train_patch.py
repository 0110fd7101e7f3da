"""`defectgen train patch` at toy size: held-in selection, windows, exact resume, CLI outputs and errors."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from defectgen.cli import app
from defectgen.data.procedural import make_dataset
from defectgen.errors import DataError
from defectgen.nets.patch import PatchDiscriminator
from defectgen.training import losses, patch_gan
from defectgen.training.checkpoint import read_checkpoint
from defectgen.training.config import TrainPatchConfig
from defectgen.training.patch_data import MIN_DEFECT_PX, load_patch_data
from defectgen.training.patch_gan import load_patch_generator, train_patch

runner = CliRunner()
P = 16


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "nuts"
    make_dataset(root, res=48, n_good=4, n_defect=7, n_test_good=1, seed=2)
    return root


def test_held_in_is_the_first_third_by_sorted_name(data):
    d = load_patch_data(data, window=P, per_defect=2, per_good=2)
    assert d.type_names == ["crack", "cut", "hole", "print"]
    assert d.held_in == {t: ["000.png", "001.png", "002.png"] for t in d.type_names}  # ceil(7 / 3) = 3
    assert load_patch_data(data, window=P, held_in=1, per_defect=2, per_good=2).held_in["hole"] == ["000.png"]
    with pytest.raises(DataError, match="--held-in 8"):
        load_patch_data(data, window=P, held_in=8)


def test_windows_contain_the_defect_and_come_from_the_image(data):
    d = load_patch_data(data, window=P, per_defect=8, per_good=3, seed=1)
    assert d.defects.shape == (4 * 3 * 8, 3, P, P) and d.masks.shape == (4 * 3 * 8, 1, P, P)
    assert d.goods.shape == (4 * 3, 3, P, P)
    assert (d.masks.flatten(1).sum(1) >= MIN_DEFECT_PX).all()
    assert set(d.masks.unique().tolist()) <= {0.0, 1.0}
    assert d.defects.min() >= -1 and d.defects.max() <= 1
    assert torch.bincount(d.types).tolist() == [24] * 4
    again = load_patch_data(data, window=P, per_defect=8, per_good=3, seed=1)
    assert torch.equal(again.defects, d.defects) and torch.equal(again.goods, d.goods)  # pure function of seed


def test_native_scale_keeps_the_defect_size(data):
    """At scale 1 a window's mask area is the source's (up to the +-10 % zoom); at scale 2 it is ~1/4."""
    one = load_patch_data(data, window=P, per_defect=16, per_good=1, held_in=1, seed=3)
    two = load_patch_data(data, window=P, scale=2.0, per_defect=16, per_good=1, held_in=1, seed=3)
    assert two.masks.mean() < 0.6 * one.masks.mean()


def cfg(data, steps, **kw):
    return TrainPatchConfig(data=str(data), window=P, steps=steps, batch=4, per_defect=2, per_good=2,
                            log_every=1, sample_every=2, ckpt_every=2, grid_per_type=2, **kw)


def test_resume_is_bit_exact(data, tmp_path):
    full = train_patch(cfg(data, 4), tmp_path / "full", tiny=True, progress=False)
    train_patch(cfg(data, 2), tmp_path / "half", tiny=True, progress=False)
    resumed = train_patch(cfg(data, 4), tmp_path / "half", resume=True, tiny=True, progress=False)
    assert full.step == resumed.step == 4
    a, b = read_checkpoint(tmp_path / "full"), read_checkpoint(tmp_path / "half")
    assert set(a.tensors) == set(b.tensors)
    for k in a.tensors:
        if not k.startswith("rng."):
            assert torch.equal(a.tensors[k], b.tensors[k]), k
    assert full.history[-1] == resumed.history[-1]
    assert a.meta["held_in"]["crack"] == ["000.png", "001.png", "002.png"]
    g = load_patch_generator(tmp_path / "full")
    assert not any(p.requires_grad for p in g.parameters())


def test_adaptive_augmentation_moves_p_and_resumes_exactly(data, tmp_path, monkeypatch):
    # a toy D calls every real fake, so ADA's own rule would keep p at 0: step p by a fixed 0.25 instead
    monkeypatch.setattr(patch_gan, "next_ada_p", lambda p, *_: min(p + 0.25, 1.0))
    ada = {"ada_target": 0.6}
    full = train_patch(cfg(data, 4, **ada), tmp_path / "full", tiny=True, progress=False)
    assert [h["ada_p"] for h in full.history] == [0.25, 0.5, 0.75, 1.0]
    train_patch(cfg(data, 2, **ada), tmp_path / "half", tiny=True, progress=False)
    assert read_checkpoint(tmp_path / "half").meta["ada_p"] == 0.5
    resumed = train_patch(cfg(data, 4, **ada), tmp_path / "half", resume=True, tiny=True, progress=False)
    assert resumed.history[-1] == full.history[-1]
    a, b = read_checkpoint(tmp_path / "full"), read_checkpoint(tmp_path / "half")
    for k in a.tensors:
        if not k.startswith("rng."):
            assert torch.equal(a.tensors[k], b.tensors[k]), k
    plain = train_patch(cfg(data, 4), tmp_path / "plain", tiny=True, progress=False)
    assert "ada_p" not in plain.history[-1] and plain.state.ada_p == 0.0
    # from step 1 on D saw rotated, zoomed, cut-out windows: its weights part from the plain run's
    assert not torch.equal(plain.state.D.stem.from_img.weight, full.state.D.stem.from_img.weight)


def _record_ada_p(monkeypatch) -> list[float]:
    """Every augmentation call's p, in order: D's fakes, D's reals (and R1's), G's adversarial input."""
    seen: list[float] = []
    for module in (patch_gan, losses):
        def record(i, m, pol, p=0.0, _real=module.augment):
            seen.append(p)
            return _real(i, m, pol, p)

        monkeypatch.setattr(module, "augment", record)
    return seen


def test_every_d_input_of_a_step_sees_the_same_p_and_ada_can_be_switched_off(data, tmp_path, monkeypatch):
    monkeypatch.setattr(patch_gan, "next_ada_p", lambda p, *_: min(p + 0.25, 1.0))
    seen = _record_ada_p(monkeypatch)
    train_patch(cfg(data, 3, ada_target=0.6), tmp_path / "run", tiny=True, progress=False)
    # per step: D's fakes, its reals (on R1 steps the same augmented reals), G's adversarial input
    assert seen == [0.0] * 3 + [0.25] * 3 + [0.5] * 3
    seen.clear()
    off = train_patch(cfg(data, 5, ada_target=0.0), tmp_path / "run", resume=True, tiny=True, progress=False,
                      override=["ada_target"])
    assert off.state.ada_p == 0.0 and seen and set(seen) == {0.0}  # resumed with ADA off: no adaptive ops


def test_cli_writes_checkpoint_samples_and_report(data, tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", "patch", "--data", str(data), "--out", str(out), "--window", str(P),
                            "--steps", "2", "--batch", "4", "--held-in", "2", "--seed", "1",
                            "--augment", "translation"])
    assert r.exit_code == 0, r.output
    for name in ("checkpoint.safetensors", "config.json", "held_in.json", "log.jsonl", "reals.png",
                 "report.json", "report.png", "samples/000002.png"):
        assert (out / name).is_file(), name
    assert json.loads((out / "held_in.json").read_text())["cut"] == ["000.png", "001.png"]
    assert json.loads((out / "config.json").read_text())["train_patch"]["augment"] == "translation"
    rep = json.loads((out / "report.json").read_text())
    assert rep["step"] == 2 and set(rep["per_type"]) == {"crack", "cut", "hole", "print"}
    for row in rep["per_type"].values():  # a share, or NaN where G drew no mask pixel yet
        keys = ("sample_black_share", "real_black_share", "sample_out_of_range_share",
                "sample_outside_real_range_share")
        assert all(math.isnan(row[k]) or 0 <= row[k] <= 1 for k in keys)
        assert 0 < row["real_outside_real_range_share"] < 0.1  # the reals' own 1-99 % range: a few % outside
        modes = row["colour_modes"]  # the reals' colour modes, even where G drew nothing yet
        assert 1 <= len(modes["centres"]) <= 4 and abs(sum(modes["real_share"]) - 1) < 0.01
        assert math.isnan(modes["coverage"]) or 0 <= modes["coverage"] <= 1
    lines = [json.loads(s) for s in (out / "log.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 2 and np.isfinite(lines[-1]["loss_D"])
    # a second run into the same folder needs --resume; --resume extends it
    r = runner.invoke(app, ["train", "patch", "--data", str(data), "--out", str(out), "--window", str(P)])
    assert r.exit_code == 2 and "--resume" in r.output
    moved = tmp_path / "moved"  # the dataset moved (another machine): --data says where it is now
    shutil.copytree(data, moved)
    r = runner.invoke(app, ["train", "patch", "--data", str(moved), "--out", str(out), "--steps", "3", "--resume"])
    assert r.exit_code == 0, r.output
    ck = read_checkpoint(out)
    assert ck.step == 3 and ck.configs["train_patch"]["augment"] == "translation"  # the saved options win
    assert ck.configs["train_patch"]["data"] == str(moved)
    (moved / "test" / "cut" / "000.png").unlink()  # another held-in selection: refused, nothing written
    r = runner.invoke(app, ["train", "patch", "--data", str(moved), "--out", str(out), "--steps", "5", "--resume"])
    assert r.exit_code == 2 and "held-in defect files" in r.output, r.output
    assert read_checkpoint(out).step == 3
    # ... except --augment given on a resume: fine-tuning with another augmentation from here on
    r = runner.invoke(app, ["train", "patch", "--data", str(data), "--out", str(out), "--steps", "4", "--resume",
                            "--augment", "flip"])
    assert r.exit_code == 0, r.output
    ck = read_checkpoint(out)
    assert ck.step == 4 and ck.configs["train_patch"]["augment"] == "flip"


def test_shape_d_judges_masks_only_and_can_join_a_resumed_run(data, tmp_path):
    train_patch(cfg(data, 2), tmp_path / "run", tiny=True, progress=False)
    assert not read_checkpoint(tmp_path / "run").has("D_shape")
    tuned = train_patch(cfg(data, 4, shape_weight=0.5), tmp_path / "run", resume=True, tiny=True, progress=False,
                        override=["shape_weight"])
    ck = read_checkpoint(tmp_path / "run")
    assert ck.has("D_shape") and ck.configs["train_patch"]["shape_weight"] == 0.5
    restored = train_patch(cfg(data, 4), tmp_path / "run", resume=True, tiny=True, progress=False).state
    assert restored.step == 4 and restored.D_shape is not None  # no step run: the saved shape D, as it was
    for k, v in restored.D_shape.state_dict().items():
        assert torch.equal(v, ck.state_dict("D_shape")[k]), k
    last = tuned.history[-1]
    assert all(np.isfinite(last[k]) for k in ("shape_loss_D", "shape_D_real", "shape_D_fake", "loss_G_shape"))
    st = tuned.state
    assert st.D_shape is not None and sum(p.numel() for p in st.D_shape.parameters()) < sum(
        p.numel() for p in st.D.parameters())  # half the channels
    # resuming keeps it; in a step it sees masks (real and G's) but no pixels: its image input is flat
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    real_forward = PatchDiscriminator.forward

    def spy(self, image, mask, type_onehot, **kw):  # type: ignore[no-untyped-def]
        if self is st_shape[0]:
            seen.append((image.detach().clone(), mask.detach().clone()))
        return real_forward(self, image, mask, type_onehot, **kw)

    st_shape: list[object] = []
    original = patch_gan.patch_step

    def step(st, data):  # type: ignore[no-untyped-def]
        st_shape[:] = [st.D_shape]
        return original(st, data)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PatchDiscriminator, "forward", spy)
        mp.setattr(patch_gan, "patch_step", step)
        again = train_patch(cfg(data, 5), tmp_path / "run", resume=True, tiny=True, progress=False)
    assert again.state.D_shape is not None and again.step == 5
    assert len(seen) >= 2  # its own step and G's
    for image, mask in seen:  # the run augments with colour; the shape D's input stays zeros
        assert torch.all(image == 0) and mask.sum() > 0
    r = runner.invoke(app, ["train", "patch", "--data", str(data), "--out", str(tmp_path / "bad"), "--window",
                            str(P), "--shape-weight", "-1"])
    assert r.exit_code == 2 and "--shape-weight must be >= 0" in r.output


@pytest.mark.parametrize(("args", "message"), [(["--window", "48"], "--window"),
                                                (["--batch", "3"], "--batch must be even"),
                                                (["--held-in", "9"], "--held-in 9"),
                                                (["--augment", "translation,colour"], "'color'"),
                                                (["--design", "stacked"], "--design must be one of"),
                                                (["--colour-head", "relu"], "--colour-head must be one of"),
                                                (["--device", "abacus"], "--device 'abacus' is not usable"),
                                                (["--ada-target", "1.5"], "--ada-target < 1")])
def test_cli_bad_input_is_one_line(data, tmp_path, args, message):
    r = runner.invoke(app, ["train", "patch", "--data", str(data), "--out", str(tmp_path / "r"), *args])
    assert r.exit_code == 2, r.output
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("defectgen: error:") and message in lines[0], r.output


def test_an_unusable_device_fails_before_writing(data, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the no-GPU error cannot be shown")
    r = runner.invoke(app, ["train", "patch", "--data", str(data), "--out", str(tmp_path / "r"), "--device", "cuda"])
    assert r.exit_code == 2 and "--device 'cuda' is not usable here" in r.output, r.output
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_run_resumes_on_the_cpu(data, tmp_path):
    gpu = train_patch(cfg(data, 2), tmp_path / "run", tiny=True, progress=False, device="cuda")
    assert next(gpu.state.G.parameters()).is_cuda
    cpu = train_patch(cfg(data, 4), tmp_path / "run", resume=True, tiny=True, progress=False, device="cpu")
    assert cpu.step == 4 and not next(cpu.state.G.parameters()).is_cuda
    assert np.isfinite(cpu.history[-1]["loss_G"])


def test_init_from_a_slim_run_starts_from_its_nets_and_keeps_its_options(data, tmp_path, monkeypatch):
    from defectgen.training.slim import export_slim

    monkeypatch.setattr(patch_gan, "next_ada_p", lambda p, *_: min(p + 0.25, 1.0))  # a toy D keeps p at 0
    train_patch(cfg(data, 2, ada_target=0.6), tmp_path / "src", tiny=True, progress=False)
    export_slim(tmp_path / "src", tmp_path / "slim")
    src = read_checkpoint(tmp_path / "slim")
    d = load_patch_data(data, window=P, per_defect=2, per_good=2)
    st = patch_gan.init_state(src, cfg(data, 1, ada_target=0.6), d)
    for name in ("G", "G_ema"):
        for k, v in getattr(st, name).state_dict().items():
            assert torch.equal(v, src.state_dict("G_ema")[k]), (name, k)
    assert all(torch.equal(v, src.state_dict("D")[k]) for k, v in st.D.state_dict().items())
    assert st.step == 0 and st.ada_p == src.meta["ada_p"] > 0
    assert not st.opt_G.state  # fresh optimisers
    # the CLI: options not given (window 16, batch 4, ADA) are the source run's; the budget and new ones are not
    out = tmp_path / "tuned"
    r = runner.invoke(app, ["train", "patch", "--data", str(data), "--out", str(out), "--init-from",
                            str(tmp_path / "slim"), "--steps", "2", "--range-weight", "0.5"])
    assert r.exit_code == 0, r.output
    ck = read_checkpoint(out)
    saved = ck.configs["train_patch"]
    assert ck.step == 2 and saved["window"] == P and saved["batch"] == 4 and saved["ada_target"] == 0.6
    assert saved["range_weight"] == 0.5 and saved["init_from"] == str(tmp_path / "slim")
    logged = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(x["loss_G_range"]) for x in logged if "loss_G" in x)


@pytest.mark.parametrize(("args", "message"), [(["--window", "32"], "its G has window 16"),
                                                (["--colour-head", "wide"], "colour head 'wide'")])
def test_init_from_other_nets_is_refused_before_writing(data, tmp_path, args, message):
    train_patch(cfg(data, 1), tmp_path / "src", tiny=True, progress=False)
    out = tmp_path / "r"
    r = runner.invoke(app, ["train", "patch", "--data", str(data), "--out", str(out), "--init-from",
                            str(tmp_path / "src"), *args])
    assert r.exit_code == 2 and f"--init-from {tmp_path / 'src'}" in r.output and message in r.output, r.output
    assert not out.exists()


def test_the_range_term_can_join_a_resumed_run(data, tmp_path):
    plain = train_patch(cfg(data, 2), tmp_path / "run", tiny=True, progress=False)
    tuned = train_patch(cfg(data, 4, range_weight=2.0), tmp_path / "run", resume=True, tiny=True, progress=False,
                        override=["range_weight"])
    assert read_checkpoint(tmp_path / "run").configs["train_patch"]["range_weight"] == 2.0
    assert not any("loss_G_range" in h for h in plain.history) and all("loss_G_range" in h for h in tuned.history)
    lo, hi = tuned.state.colour_range
    assert lo.shape == hi.shape == (4, 3) and (lo < hi).all()
    r = runner.invoke(app, ["train", "patch", "--data", str(data), "--out", str(tmp_path / "bad"), "--window",
                            str(P), "--range-weight", "-1"])
    assert r.exit_code == 2 and "--range-weight must be >= 0" in r.output
    holes = train_patch(cfg(data, 5, range_weight=2.0, range_types="hole"), tmp_path / "run", resume=True, tiny=True,
                        progress=False, override=["range_weight", "range_types"])
    lo, hi = holes.state.colour_range
    assert torch.isfinite(lo[2]).all() and torch.isinf(lo[[0, 1, 3]]).all() and torch.isinf(hi[[0, 1, 3]]).all()
    r = runner.invoke(app, ["train", "patch", "--data", str(data), "--out", str(tmp_path / "bad"), "--window",
                            str(P), "--range-types", "hole,scratch"])
    assert r.exit_code == 2 and "--range-types: no defect type scratch" in r.output, r.output
    assert not (tmp_path / "bad").exists()
