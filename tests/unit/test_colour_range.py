"""The colour-range term: real defects' per-type pixel quantiles, and an L1 hinge beyond them inside G's mask."""

from __future__ import annotations

import pytest
import torch

from defectgen.nets.patch import PatchGeneratorConfig, PatchSynthesis
from defectgen.training.colour_range import colour_ranges, only_types, range_loss


def test_ranges_are_the_masked_pixels_quantiles_per_type_and_channel():
    g = torch.Generator().manual_seed(0)
    windows = torch.rand(6, 3, 8, 8, generator=g) * 2 - 1
    masks = torch.zeros(6, 1, 8, 8)
    masks[:, :, 2:6, 2:6] = 1
    windows[:3, :, :2] = 5.0  # outside every mask: must not count
    types = torch.tensor([0, 0, 0, 1, 1, 1])
    lo, hi = colour_ranges(windows, masks, types, n_types=3, q=0.1)
    for t in (0, 1):
        px = windows[types == t].permute(1, 0, 2, 3)[:, masks[types == t, 0] > 0.5]
        assert torch.allclose(lo[t], torch.quantile(px, 0.1, dim=1))
        assert torch.allclose(hi[t], torch.quantile(px, 0.9, dim=1))
    assert (hi[:2] < 1).all() and (lo[:2] > -1).all()
    assert torch.equal(lo[2], torch.full((3,), -1.0)) and torch.equal(hi[2], torch.ones(3))  # no pixels: no bound


def test_loss_is_the_mean_excess_inside_the_mask_only():
    lo, hi = torch.full((1, 3), -0.5), torch.full((1, 3), 0.5)
    x = torch.zeros(2, 3, 4, 4)
    alpha = torch.zeros(2, 1, 4, 4)
    alpha[:, :, :2] = 1  # 8 px inside per sample
    types = torch.zeros(2, dtype=torch.int64)
    assert range_loss(x, alpha, types, lo, hi) == 0
    x[:, :, 2:] = -9.0  # far out of range, but outside the mask
    assert range_loss(x, alpha, types, lo, hi) == 0
    x[0, 0, 0, 0] = -1.5  # 1.0 below lo in one of sample 0's 24 masked values
    x[1, 2, 1, 3] = 0.75  # 0.25 above hi in one of sample 1's
    assert range_loss(x, alpha, types, lo, hi).item() == pytest.approx((1.0 / 24 + 0.25 / 24) / 2)


def test_the_hinge_on_the_head_input_keeps_a_gradient_where_the_tanh_saturates():
    syn = PatchSynthesis(PatchGeneratorConfig(window=16, z_dim=8, w_dim=8, n_types=1, mapping_layers=1,
                                              channel_base=32, channel_max=8))
    bound = torch.tensor([[-0.9, -0.9, -0.9]])
    rgb = torch.full((1, 3, 2, 2), -6.0, requires_grad=True)  # tanh(-6) = -0.99999: black, slope 2.5e-5
    alpha = torch.ones(1, 1, 2, 2)
    types = torch.zeros(1, dtype=torch.int64)
    range_loss(rgb, alpha, types, syn.colour_head_input(bound), syn.colour_head_input(-bound)).backward()
    assert rgb.grad is not None and (rgb.grad.abs() == 1 / 12).all()  # one unit per masked value, not ~0
    assert torch.allclose(syn.colour_head(syn.colour_head_input(bound)), bound, atol=1e-6)


@pytest.mark.parametrize("head", [{"colour_bound": 1.2}, {"colour_tanh": False}])
def test_the_head_input_inverts_every_head(head):
    syn = PatchSynthesis(PatchGeneratorConfig(window=16, z_dim=8, w_dim=8, n_types=1, mapping_layers=1,
                                              channel_base=32, channel_max=8, **head))
    c = torch.linspace(-0.99, 0.99, 11)
    assert torch.allclose(syn.colour_head(syn.colour_head_input(c)), c, atol=1e-5)


def test_types_left_out_are_unbounded():
    lo, hi = torch.full((2, 3), -0.5), torch.full((2, 3), 0.5)
    lo2, hi2 = only_types(lo, hi, ["crack", "hole"], ["hole"])
    assert torch.equal(lo2[1], lo[1]) and torch.equal(hi2[1], hi[1])
    x = torch.full((2, 3, 4, 4), -50.0, requires_grad=True)
    loss = range_loss(x, torch.ones(2, 1, 4, 4), torch.tensor([0, 1]), lo2, hi2)
    assert loss.item() == pytest.approx(49.5 / 2)  # the hole's excess only, averaged over the batch of two
    loss.backward()
    assert x.grad is not None and torch.all(x.grad[0] == 0) and torch.all(x.grad[1] < 0)
