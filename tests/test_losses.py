"""Losses: per-pixel maps average to the loss, weights plug in, known values."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from noisyseg.losses import LOSSES, build_loss

LOGITS = torch.randn(3, 1, 8, 8, dtype=torch.float64)
TARGET = (torch.rand(3, 1, 8, 8) > 0.5).double()


@pytest.mark.parametrize("name", LOSSES.names())
def test_map_mean_is_loss_and_uniform_weights_recover_it(name):
    loss = build_loss(name)
    losses = loss.per_pixel(LOGITS, TARGET)
    assert losses.shape == LOGITS.shape
    uniform = torch.full_like(losses, 1 / losses.numel())
    assert torch.allclose(loss(LOGITS, TARGET), losses.mean())
    assert torch.allclose(loss(LOGITS, TARGET, uniform), losses.mean())


def test_dice_map_sums_to_soft_dice_with_the_same_gradient():
    logits = LOGITS.clone().requires_grad_()
    p = torch.sigmoid(logits)
    inter, total = (p * TARGET).sum((1, 2, 3)), p.sum((1, 2, 3)) + TARGET.sum((1, 2, 3))
    reference = (1 - (2 * inter + 1) / (total + 1)).mean()
    ours = build_loss("dice")(logits, TARGET)
    assert torch.allclose(ours, reference)
    g1, = torch.autograd.grad(ours, logits)
    g2, = torch.autograd.grad(reference, logits)
    assert torch.allclose(g1, g2)


def test_bce_and_gce_limits():
    assert torch.allclose(build_loss("bce")(LOGITS, TARGET), F.binary_cross_entropy_with_logits(LOGITS, TARGET))
    p_t = torch.where(TARGET > 0.5, torch.sigmoid(LOGITS), 1 - torch.sigmoid(LOGITS))
    assert torch.allclose(build_loss("gce", q=1.0).per_pixel(LOGITS, TARGET), 1 - p_t)  # q = 1: MAE
    near_bce = build_loss("gce", q=1e-4).per_pixel(LOGITS, TARGET)
    assert torch.allclose(near_bce, build_loss("bce").per_pixel(LOGITS, TARGET), atol=1e-2)


def test_bootstrap_beta_one_is_bce():
    assert torch.allclose(build_loss("bootstrap", beta=1.0)(LOGITS, TARGET), build_loss("bce")(LOGITS, TARGET))


def test_bad_loss_options():
    with pytest.raises(ValueError, match="loss.q=0"):
        build_loss("gce", q=0)
    with pytest.raises(Exception, match="valid options: q"):
        build_loss("gce", beta=0.5)
