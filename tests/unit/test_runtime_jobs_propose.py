"""G proposes random targets (`--mask-shape generated`): the whole drawn defect D scores highest (without a critic:
the first) becomes the target, at the window's place in the full image, and its latent the inversion's start."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest

from defectgen.errors import JobError
from defectgen.runtime.backends.ort import OrtBackend
from defectgen.runtime.bundle import Bundle
from defectgen.runtime.jobs.compose import Crop
from defectgen.runtime.jobs.propose import MIN_MODEL_PX, PROPOSAL_DRAWS, propose_target, whole_defects

if TYPE_CHECKING:
    from toy_bundle import ToyModel


class Drawn(OrtBackend):
    """The toy bundle's engine, but synthesis returns the masks (logits) given here, one per draw, and the critic
    the given scores."""

    def __init__(self, bundle: Bundle, logits: np.ndarray, scores: np.ndarray | None = None) -> None:
        super().__init__(bundle, threads=1)
        self.logits, self.scores, self.calls, self.judged = logits, scores, [], []

    def critic(self, image, mask, type_onehot):  # type: ignore[no-untyped-def]
        self.judged.append((image.copy(), mask.copy(), type_onehot.copy()))
        drawn = (self.logits > 0).astype(np.float32)  # which draw each judged mask is
        return np.array([self.scores[next(i for i, d in enumerate(drawn) if np.array_equal(d, m))] for m in mask])

    def synthesize(self, space, latent, type_onehot=None, good=None):  # type: ignore[no-untyped-def]
        self.calls.append((space, latent.copy(), None if good is None else good.copy()))
        return np.zeros((len(latent), 3, *self.logits.shape[-2:]), np.float32), self.logits


def _logits(res: int, boxes: list[tuple[int, int, int, int] | None], n: int = PROPOSAL_DRAWS) -> np.ndarray:
    out = np.full((n, 1, res, res), -1.0, np.float32)
    for i, box in enumerate(boxes):
        if box is not None:
            y0, x0, y1, x1 = box
            out[i, 0, y0:y1, x0:x1] = 1.0
    return out


def test_whole_defects_need_size_and_no_edge() -> None:
    logits = _logits(8, [(0, 2, 3, 5), (2, 2, 4, 4), (3, 3, 4, 4), (2, 2, 5, 5)])
    assert whole_defects(logits)[:4].tolist() == [False, True, False, True]  # edge / 4 px / 1 px / 9 px
    assert MIN_MODEL_PX == 4


@pytest.mark.parametrize("space", ["wplus", "w", "z"])
def test_first_whole_defect_becomes_the_target(bundle: Bundle, space: str) -> None:
    r = bundle.resolution
    drawn = Drawn(bundle, _logits(r, [None, (0, 0, 3, 3), (2, 3, 5, 6), (1, 1, 4, 4)]))
    good = np.random.default_rng(0).uniform(-1, 1, (3, r, r)).astype(np.float32)
    crop = Crop(10, 20, 10 + r, 20 + r)
    p = propose_target(drawn, bundle, space=space, defect_type="crack", good_m=good, crop=crop, shape=(40, 60),
                       rng=np.random.default_rng(1))
    assert p.draw == 2  # 0 drew nothing, 1 touches the window's edge
    want = np.zeros((40, 60), np.uint8)
    want[12:15, 23:26] = 1
    assert np.array_equal(p.mask, want)  # at the window's place, nothing outside it
    drawn_space, latents, goods = drawn.calls[0]
    assert drawn_space == space and np.array_equal(p.latent, latents[2]) and np.array_equal(goods[2], good)
    again = propose_target(drawn, bundle, space=space, defect_type="crack", good_m=good, crop=crop, shape=(40, 60),
                           rng=np.random.default_rng(1))
    other = propose_target(drawn, bundle, space=space, defect_type="crack", good_m=good, crop=crop, shape=(40, 60),
                           rng=np.random.default_rng(2))
    assert np.array_equal(again.latent, p.latent) and not np.allclose(other.latent, p.latent)  # seeded draws


def test_edge_cut_draws_are_the_fallback_and_nothing_is_an_error(bundle: Bundle) -> None:
    r = bundle.resolution
    good = np.zeros((3, r, r), np.float32)
    kw = {"space": "w", "defect_type": "hole", "good_m": good, "crop": Crop.full((r, r)), "shape": (r, r),
          "rng": np.random.default_rng(0)}
    p = propose_target(Drawn(bundle, _logits(r, [(0, 0, 2, 2), (0, 0, 3, 3)])), bundle, **kw)
    assert p.draw == 1  # only edge-cut draws: the largest
    with pytest.raises(JobError, match="drew no hole defect"):
        propose_target(Drawn(bundle, _logits(r, [None, (1, 1, 2, 2)])), bundle, **kw)


@pytest.fixture
def patch_bundle(tmp_path, toy: ToyModel, toy_bundle_factory) -> Bundle:  # type: ignore[no-untyped-def]
    return Bundle.load(toy_bundle_factory(tmp_path / "bundle", model=toy, patch_scale=1.0))


def test_the_critic_picks_the_most_real_whole_defect(patch_bundle: Bundle) -> None:
    b, r = patch_bundle, patch_bundle.resolution
    assert b.has_critic
    logits = _logits(r, [(2, 2, 4, 4), (0, 0, 4, 4), (1, 1, 5, 5), (3, 3, 6, 6)])
    scores = np.full(PROPOSAL_DRAWS, 8.0, np.float32)  # 4 and on drew nothing
    scores[:4] = [0.5, 9.0, 2.0, 1.0]  # 1 is cut by the edge
    drawn = Drawn(b, logits, scores)
    good = np.random.default_rng(0).uniform(-1, 1, (3, r, r)).astype(np.float32)
    p = propose_target(drawn, b, space="wplus", defect_type="hole", good_m=good, crop=Crop.full((r, r)),
                       shape=(r, r), rng=np.random.default_rng(0))
    assert p.draw == 2 and p.score == 2.0  # the best-scored whole defect, not the first (0) nor the edge-cut (1)
    image, mask, onehot = drawn.judged[0]
    whole = logits[[0, 2, 3]]  # D judges the whole draws only, their binary masks ...
    assert np.array_equal(mask, (whole > 0).astype(np.float32))
    outside = np.broadcast_to(whole <= 0, image.shape)
    assert np.array_equal(image[outside], np.broadcast_to(good, image.shape)[outside])  # ... on the hard composite
    assert (onehot.argmax(1) == b.type_index("hole")).all()


def test_real_critic_graph_scores_each_draw(patch_bundle: Bundle, toy: ToyModel) -> None:
    r = patch_bundle.resolution
    rng = np.random.default_rng(3)
    image = rng.uniform(-1, 1, (5, 3, r, r)).astype(np.float32)
    mask = (rng.uniform(0, 1, (5, 1, r, r)) > 0.7).astype(np.float32)
    onehot = patch_bundle.type_onehot(["crack", "hole", "good", "crack", "hole"])
    with OrtBackend(patch_bundle, threads=1) as ob:
        got = ob.critic(image, mask, onehot)
    assert got.shape == (5,) and np.allclose(got, toy.critic(image, mask, onehot), atol=1e-5)


def test_without_a_critic_the_first_whole_defect_is_kept(tmp_path, toy: ToyModel, toy_bundle_factory) -> None:  # type: ignore[no-untyped-def]
    b = Bundle.load(toy_bundle_factory(tmp_path / "bundle", model=toy, patch_scale=1.0, critic=False))
    r = b.resolution
    assert not b.has_critic
    drawn = Drawn(b, _logits(r, [(2, 2, 4, 4), (1, 1, 5, 5)]), np.zeros(PROPOSAL_DRAWS, np.float32))
    p = propose_target(drawn, b, space="w", defect_type="hole", good_m=np.zeros((3, r, r), np.float32),
                       crop=Crop.full((r, r)), shape=(r, r), rng=np.random.default_rng(0))
    assert p.draw == 0 and p.score is None and not drawn.judged


def test_draws_is_the_number_of_latents_drawn(bundle: Bundle) -> None:
    r = bundle.resolution
    drawn = Drawn(bundle, _logits(r, [None, None, (2, 2, 4, 4)], n=3))
    p = propose_target(drawn, bundle, space="wplus", defect_type="crack", good_m=np.zeros((3, r, r), np.float32),
                       crop=Crop.full((r, r)), shape=(r, r), rng=np.random.default_rng(0), draws=3)
    assert p.draw == 2 and drawn.calls[0][1].shape[0] == 3 and drawn.calls[0][2].shape[0] == 3


def test_a_non_finite_score_never_wins(patch_bundle: Bundle) -> None:
    r = patch_bundle.resolution
    logits = _logits(r, [(2, 2, 4, 4), (1, 1, 5, 5)])
    kw = {"space": "w", "defect_type": "crack", "good_m": np.zeros((3, r, r), np.float32), "crop": Crop.full((r, r)),
          "shape": (r, r), "rng": np.random.default_rng(0)}
    scores = np.full(PROPOSAL_DRAWS, -1.0, np.float32)
    scores[:2] = [np.nan, 0.5]
    p = propose_target(Drawn(patch_bundle, logits, scores), patch_bundle, **kw)
    assert p.draw == 1 and p.score == 0.5
    scores[:2] = [np.nan, np.inf]  # nothing usable: the first whole draw, no score to record
    p = propose_target(Drawn(patch_bundle, logits, scores), patch_bundle, **kw)
    assert p.draw == 0 and p.score is None
