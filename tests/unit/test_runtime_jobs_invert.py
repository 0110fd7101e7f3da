"""The inversion loop: Adam convergence to the toy's known minimum, early stop, NaN guard, determinism, inits."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from defectgen.errors import BundleError, JobError
from defectgen.runtime.backends.ort import OrtBackend
from defectgen.runtime.bundle import Bundle
from defectgen.runtime.jobs.invert import InversionBatch, InversionConfig, init_latent, invert

if TYPE_CHECKING:
    from toy_bundle import ToyModel



def _batch(toy: ToyModel, n: int, seed: int = 1) -> InversionBatch:
    return InversionBatch(*toy.inputs(n, seed))


@pytest.mark.parametrize("space", ["wplus", "w", "z"])
def test_adam_converges_to_known_minimum(backend: OrtBackend, bundle: Bundle, toy: ToyModel, space: str) -> None:
    batch = _batch(toy, 5)
    cfg = InversionConfig(space=space, steps=150, lr=0.05, lr_schedule="cosine", early_stop_patience=0)
    res = invert(backend, bundle, batch, config=cfg)
    onehot = bundle.type_onehot(batch.types) if space == "z" else None
    opt = toy.optimum(space, batch.good, batch.mask, batch.stitched, bundle.lambda_vector(), onehot)
    obj = res.objective
    assert res.terms_history.shape == (151, 5, 6)
    assert (obj[-1] < obj[0]).all()
    assert not res.failed.any() and (res.steps_run == 150).all()
    np.testing.assert_allclose(res.latent, opt, atol=5e-3)
    assert np.abs(res.latent - opt).max() < 0.05 * np.abs(res.init_latent - opt).max()
    opt_f = toy.terms(space, opt, batch.good, batch.mask, batch.stitched, bundle.lambda_vector(), onehot).sum(1)
    np.testing.assert_allclose(res.final_objective, opt_f, rtol=1e-3)
    img, logit = backend.synthesize(space, res.latent, onehot)
    np.testing.assert_array_equal(res.image, img)
    assert res.mask_logit.shape == (5, 1, 8, 8)


def test_default_few_steps_reduce_objective(backend: OrtBackend, bundle: Bundle, toy: ToyModel) -> None:
    res = invert(backend, bundle, _batch(toy, 3), config=InversionConfig(steps=10))
    assert (res.final_objective < res.objective[0]).all()
    assert res.timings["step_calls"] >= 1 and res.timings["total_s"] > 0


def test_lambda_override_moves_the_minimum(backend: OrtBackend, bundle: Bundle, toy: ToyModel) -> None:
    batch = _batch(toy, 2)
    lam = {"mask": 5.0, "bg": 0.0, "def": 0.0, "pix": 0.0, "dom": 0.0, "prior": 0.0}
    res = invert(backend, bundle, batch, config=InversionConfig(space="w", steps=150, lambdas=lam,
                                                                early_stop_patience=0))
    np.testing.assert_allclose(res.final_terms[:, 1:], 0.0)
    target = toy.targets("w", batch.good, batch.mask, batch.stitched)[:, 0]  # the "mask" term's own target
    np.testing.assert_allclose(res.latent, target, atol=2e-3)


def test_early_stop_on_plateau(backend: OrtBackend, bundle: Bundle, toy: ToyModel) -> None:
    batch = _batch(toy, 3)
    cfg = InversionConfig(space="w", steps=300, lr=0.05, lr_schedule="constant", early_stop_patience=3,
                          plateau_rtol=1e-3)
    res = invert(backend, bundle, batch, config=cfg)
    assert (res.steps_run < 300).all()
    last = res.steps_run.max()
    assert np.isnan(res.terms_history[last + 2:]).all()  # stopped samples are no longer evaluated
    full = invert(backend, bundle, batch, config=InversionConfig(space="w", steps=300, lr_schedule="constant",
                                                                 early_stop_patience=0))
    assert (res.final_objective <= full.objective[0]).all()
    np.testing.assert_allclose(res.final_objective, full.final_objective, rtol=0.05, atol=1e-3)


def test_determinism_by_seed(backend: OrtBackend, bundle: Bundle, toy: ToyModel) -> None:
    batch = _batch(toy, 4)
    for init, space in [("random", "wplus"), ("encoder", "z")]:
        a = invert(backend, bundle, batch, config=InversionConfig(space=space, init=init, seed=7))
        b = invert(backend, bundle, batch, config=InversionConfig(space=space, init=init, seed=7))
        c = invert(backend, bundle, batch, config=InversionConfig(space=space, init=init, seed=8))
        np.testing.assert_array_equal(a.latent, b.latent)
        np.testing.assert_array_equal(a.terms_history, b.terms_history)
        assert not np.array_equal(a.init_latent, c.init_latent)


def test_inits(backend: OrtBackend, bundle: Bundle, toy: ToyModel) -> None:
    batch = _batch(toy, 3)
    rng = np.random.default_rng(0)
    enc = toy.encode(batch.stitched, batch.mask)
    wp = init_latent(backend, bundle, batch, InversionConfig(space="wplus", init="encoder"), rng)
    np.testing.assert_allclose(wp, enc, rtol=1e-5, atol=1e-6)
    w = init_latent(backend, bundle, batch, InversionConfig(space="w", init="encoder"), rng)
    np.testing.assert_allclose(w, enc.mean(1), rtol=1e-5, atol=1e-6)
    wavg = init_latent(backend, bundle, batch, InversionConfig(space="wplus", init="wavg"), rng)
    assert wavg.shape == (3, 3, 4)
    np.testing.assert_allclose(wavg[0, 2], bundle.w_avg(batch.types[0]))
    assert not init_latent(backend, bundle, batch, InversionConfig(space="z", init="wavg"), rng).any()
    z = init_latent(backend, bundle, batch, InversionConfig(space="z", init="random"), rng)
    assert z.shape == (3, 4)
    # z from the encoder: the chosen candidate maps closer to the encoder's w than a plain random z does
    cfg = InversionConfig(space="z", init="encoder", z_candidates=64)
    zc = init_latent(backend, bundle, batch, cfg, np.random.default_rng(0))
    onehot = bundle.type_onehot(batch.types)
    d_search = ((toy.map(zc, onehot) - enc.mean(1)) ** 2).sum(1)
    d_random = ((toy.map(np.random.default_rng(0).standard_normal((3, 4)), onehot) - enc.mean(1)) ** 2).sum(1)
    assert d_search.mean() < d_random.mean()


def test_nan_guard_fails_only_the_bad_sample(tmp_path: Path, toy: ToyModel,
                                             toy_bundle_factory: Callable[..., Path]) -> None:
    batch = _batch(toy, 4, seed=3)
    b0 = Bundle.load(toy_bundle_factory(tmp_path / "ok", model=toy))
    lam = b0.lambda_vector()
    opt = toy.optimum("w", batch.good, batch.mask, batch.stitched, lam)
    start = b0.w_avg(batch.types[0]).max()
    peaks = opt.max(1)
    bad = int(np.argmax(peaks))
    thr = float(max(np.sort(peaks)[-2], start, *[b0.w_avg(t).max() for t in batch.types]) + 0.02)
    assert peaks[bad] > thr + 0.02, "toy inputs must put one sample's optimum above the threshold"
    nb = Bundle.load(toy_bundle_factory(tmp_path / "nan", model=toy, nan_above=thr))
    with OrtBackend(nb, threads=1) as be:
        res = invert(be, nb, batch, config=InversionConfig(space="w", init="wavg", steps=200, early_stop_patience=0))
    assert res.failed.tolist() == [i == bad for i in range(4)]
    assert np.isfinite(res.latent).all() and np.isfinite(res.final_terms).all() and np.isfinite(res.image).all()
    assert res.latent[bad].max() <= thr  # frozen at a finite latent below the poison threshold
    assert res.steps_run[bad] < 200 and (np.delete(res.steps_run, bad) == 200).all()
    assert np.isnan(res.terms_history[-1, bad]).all()
    ok = [i for i in range(4) if i != bad]
    np.testing.assert_allclose(res.latent[ok], opt[ok], atol=2e-3)


def test_config_validation(backend: OrtBackend, bundle: Bundle, toy: ToyModel) -> None:
    batch = _batch(toy, 1)
    with pytest.raises(JobError, match="did you mean 'random'"):
        invert(backend, bundle, batch, config=InversionConfig(init="randon"))
    with pytest.raises(BundleError, match="did you mean 'wplus'"):
        invert(backend, bundle, batch, config=InversionConfig(space="wplu"))
    with pytest.raises(BundleError, match="did you mean 'def'"):
        invert(backend, bundle, batch, config=InversionConfig(lambdas={"deff": 1.0}))
    with pytest.raises(JobError, match="lr must be"):
        invert(backend, bundle, batch, config=InversionConfig(lr=0.0))
    with pytest.raises(JobError, match="lr_schedule"):
        invert(backend, bundle, batch, config=InversionConfig(lr_schedule="step"))
    with pytest.raises(BundleError, match="did you mean 'crack'"):
        invert(backend, bundle, InversionBatch(batch.good, batch.mask, batch.stitched, ["crak"]),
               config=InversionConfig(space="z"))
    with pytest.raises(JobError, match="batch sizes disagree"):
        InversionBatch(batch.good, batch.mask, batch.stitched, ["crack", "hole"])


def test_lr_schedule() -> None:
    cfg = InversionConfig(steps=10, lr=0.1)
    lrs = [cfg.lr_at(i) for i in range(10)]
    assert lrs[0] == pytest.approx(0.1) and lrs[7] == pytest.approx(0.1)  # flat until the last 25 %
    assert lrs[9] < lrs[8] < lrs[7] and lrs[9] > 0
    assert InversionConfig(lr_schedule="constant", lr=0.2).lr_at(9) == 0.2
    assert InversionConfig(steps=10, lr_rampup=0.2).lr_at(0) == 0.0


def test_zero_steps_evaluates_init(backend: OrtBackend, bundle: Bundle, toy: ToyModel) -> None:
    res = invert(backend, bundle, _batch(toy, 2), config=InversionConfig(steps=0))
    np.testing.assert_array_equal(res.latent, res.init_latent)
    assert res.terms_history.shape == (1, 2, 6) and (res.steps_run == 0).all()


@pytest.mark.parametrize("space", ["wplus", "w", "z"])
def test_variants_start_from_different_latents(backend: OrtBackend, bundle: Bundle, toy: ToyModel, space: str) -> None:
    good, mask, stitched, types = toy.inputs(1)
    rep = [np.repeat(a, 3, 0) for a in (good, mask, stitched)]
    cfg = InversionConfig(space=space, init="wavg")
    plain = init_latent(backend, bundle, InversionBatch(*rep, types * 3), cfg, np.random.default_rng(0))
    batch = InversionBatch(*rep, types * 3, variants=[(7, 0), (7, 1), (7, 2)])
    c0 = init_latent(backend, bundle, batch, cfg, np.random.default_rng(0))
    assert np.array_equal(c0[0], plain[0])  # variant 0 is the configured init
    assert not np.allclose(c0[1], c0[0]) and not np.allclose(c0[2], c0[1])
    again = init_latent(backend, bundle, batch, cfg, np.random.default_rng(5))
    assert np.array_equal(again[1:], c0[1:])  # a variant's start depends on (job seed, k) only


@pytest.mark.parametrize("space", ["wplus", "w", "z"])
def test_a_start_of_its_own_overrides_init_and_variant(backend: OrtBackend, bundle: Bundle, toy: ToyModel,
                                                       space: str) -> None:
    good, mask, stitched, types = toy.inputs(1)
    rep = [np.repeat(a, 3, 0) for a in (good, mask, stitched)]
    cfg = InversionConfig(space=space, init="wavg")
    own = np.random.default_rng(3).standard_normal(toy.latent_shape(space)).astype(np.float32)
    batch = InversionBatch(*rep, types * 3, variants=[(7, 0), (7, 1), (7, 2)], starts=[None, own, None])
    c0 = init_latent(backend, bundle, batch, cfg, np.random.default_rng(0))
    plain = init_latent(backend, bundle, InversionBatch(*rep, types * 3, variants=[(7, 0), (7, 1), (7, 2)]), cfg,
                        np.random.default_rng(0))
    assert np.array_equal(c0[1], own)  # variant 1 would start elsewhere: its own start wins
    assert np.array_equal(c0[[0, 2]], plain[[0, 2]])
    wrong = InversionBatch(*rep, types * 3, starts=[own[..., :1], None, None])
    with pytest.raises(JobError, match="start latent has shape"):
        init_latent(backend, bundle, wrong, cfg, np.random.default_rng(0))


def test_proposed_samples_take_the_proposal_lr(backend: OrtBackend, bundle: Bundle, toy: ToyModel) -> None:
    """A sample starting from G's own proposal steps with `proposal_lr`; the others with `lr` (one Adam step
    moves every coordinate by about its lr)."""
    good, mask, stitched, types = toy.inputs(1)
    rep = [np.repeat(a, 2, 0) for a in (good, mask, stitched)]
    own = np.random.default_rng(3).standard_normal(toy.latent_shape("wplus")).astype(np.float32)
    batch = InversionBatch(*rep, types * 2, starts=[None, own])
    cfg = InversionConfig(steps=1, lr=0.05, proposal_lr=0.005, lr_schedule="constant", init="wavg",
                          early_stop_patience=0)
    res = invert(backend, bundle, batch, config=cfg)
    moved = np.abs(res.latent - res.init_latent).reshape(2, -1).max(1)
    np.testing.assert_allclose(moved, [0.05, 0.005], rtol=0.02)
    same = invert(backend, bundle, batch, config=InversionConfig(steps=1, lr=0.05, lr_schedule="constant",
                                                                 init="wavg", early_stop_patience=0))
    np.testing.assert_allclose(np.abs(same.latent - same.init_latent).reshape(2, -1).max(1), [0.05, 0.05], rtol=0.02)
    assert cfg.lr_for(True) == 0.005 and cfg.lr_for(False) == 0.05 and InversionConfig().lr_for(True) == 0.05
    with pytest.raises(JobError, match="proposal lr"):
        InversionConfig(proposal_lr=float("nan")).validate(bundle)


def test_proposed_samples_take_their_own_step_count(backend: OrtBackend, bundle: Bundle, toy: ToyModel) -> None:
    """With `proposal_steps` a proposed sample runs its own schedule to its own end and then leaves the batch
    (unevaluated after its last step): the same latent as if it had run alone with that many steps; the other
    sample runs `steps`."""
    good, mask, stitched, types = toy.inputs(1)
    rep = [np.repeat(a, 2, 0) for a in (good, mask, stitched)]
    own = np.random.default_rng(4).standard_normal(toy.latent_shape("wplus")).astype(np.float32)
    cfg = InversionConfig(steps=4, proposal_steps=2, lr=0.05, proposal_lr=0.01, init="wavg", early_stop_patience=0)
    res = invert(backend, bundle, InversionBatch(*rep, types * 2, starts=[None, own]), config=cfg)
    assert res.steps_run.tolist() == [4, 2] and res.terms_history.shape[0] == 5
    assert np.isfinite(res.terms_history[:2, 1]).all() and np.isnan(res.terms_history[2:, 1]).all()
    alone = invert(backend, bundle, InversionBatch(good, mask, stitched, types, starts=[own]),
                   config=InversionConfig(steps=2, lr=0.05, proposal_lr=0.01, init="wavg", early_stop_patience=0))
    np.testing.assert_allclose(res.latent[1], alone.latent[0], rtol=1e-5, atol=1e-6)
    assert cfg.steps_for(True) == 2 and cfg.steps_for(False) == 4 and InversionConfig(steps=7).steps_for(True) == 7
    more = invert(backend, bundle, InversionBatch(*rep, types * 2, starts=[None, own]),
                  config=InversionConfig(steps=1, proposal_steps=3, lr=0.05, init="wavg", early_stop_patience=0))
    assert more.steps_run.tolist() == [1, 3]  # the batch runs as long as its longest sample
    with pytest.raises(JobError, match="proposal steps"):
        InversionConfig(proposal_steps=-1).validate(bundle)


@pytest.mark.parametrize(("lr", "steps"), [(0.01, 3), (3.0, 1)])
def test_a_proposed_sample_returns_its_last_latent_unless_told_to_keep_the_best(
        backend: OrtBackend, bundle: Bundle, toy: ToyModel, lr: float, steps: int) -> None:
    """Gentle steps (lr 0.01) lower the objective, so the last latent is the best and both rules agree; a step
    that overshoots (lr 3) makes them differ, and `proposal_keep_best` returns the better latent."""
    good, mask, stitched, types = toy.inputs(1)
    own = np.random.default_rng(5).standard_normal(toy.latent_shape("wplus")).astype(np.float32)
    batch = InversionBatch(good, mask, stitched, types, starts=[own])
    kw = {"steps": steps, "lr": 10 * lr, "proposal_lr": lr, "lr_schedule": "constant", "init": "wavg",
          "early_stop_patience": 0}
    last = invert(backend, bundle, batch, config=InversionConfig(**kw))
    best = invert(backend, bundle, batch, config=InversionConfig(**kw, proposal_keep_best=True))
    assert last.timings["step_calls"] == steps and best.timings["step_calls"] == steps + 1
    # a proposal stepping at the full lr (e.g. a given --lr) keeps the evaluation and the best latent
    full = invert(backend, bundle, batch, config=InversionConfig(**{**kw, "lr": lr}))
    assert full.timings["step_calls"] == steps + 1
    np.testing.assert_allclose(full.latent, best.latent, rtol=1e-5, atol=1e-6)
    assert np.isnan(last.terms_history[steps]).all() and np.isfinite(best.terms_history[steps]).all()
    lam = bundle.lambda_vector()
    f_last = backend.step("wplus", last.latent, good, mask, stitched, lam)[0].sum()
    f_best = backend.step("wplus", best.latent, good, mask, stitched, lam)[0].sum()
    if lr < 1:
        assert np.all(np.diff(best.objective[:, 0]) < 0)
        np.testing.assert_array_equal(last.latent, best.latent)
    else:
        assert not np.array_equal(last.latent, best.latent) and f_best < f_last


class _CountingBackend:
    """Delegates to a real backend and records the rows of every `encode` call."""

    def __init__(self, inner: OrtBackend) -> None:
        self.inner, self.name, self.encoded = inner, inner.name, []

    def encode(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        self.encoded.append(len(image))
        return self.inner.encode(image, mask)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


@pytest.mark.parametrize("space", ["wplus", "w", "z"])
def test_encoder_runs_only_on_samples_that_start_from_it(backend: OrtBackend, bundle: Bundle, toy: ToyModel,
                                                         space: str) -> None:
    """Samples with a start of their own (G's proposals) or a variant's random start never use the encoder's
    output, so it does not run for them; the samples that do use it start where they would in a full batch."""
    good, mask, stitched, types = toy.inputs(4, 2)
    cfg = InversionConfig(space=space, init="encoder")
    spy = _CountingBackend(backend)
    everyone = init_latent(spy, bundle, InversionBatch(good, mask, stitched, types), cfg, np.random.default_rng(0))
    assert spy.encoded == [4]
    own = np.random.default_rng(3).standard_normal(toy.latent_shape(space)).astype(np.float32)

    spy.encoded.clear()
    mixed = InversionBatch(good, mask, stitched, types, variants=[(7, 0), (7, 0), (7, 1), (7, 0)],
                           starts=[None, own, None, None])
    c0 = init_latent(spy, bundle, mixed, cfg, np.random.default_rng(0))
    assert spy.encoded == [2]  # sample 1 has its own start, sample 2 is a variant drawn elsewhere
    np.testing.assert_array_equal(c0[[0, 3]], everyone[[0, 3]])
    np.testing.assert_array_equal(c0[1], own)

    spy.encoded.clear()
    proposed = InversionBatch(good, mask, stitched, types, starts=[own] * 4)
    res = invert(spy, bundle, proposed, config=InversionConfig(space=space, init="encoder", steps=2))
    assert spy.encoded == []
    assert np.isfinite(res.final_objective).all()
    np.testing.assert_array_equal(res.init_latent, np.stack([own] * 4))
