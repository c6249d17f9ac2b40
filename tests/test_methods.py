"""Training methods: which streams each draws from and what its step trains on."""
from __future__ import annotations

import torch

from noisyseg.losses import BCELoss
from noisyseg.methods import build_method


class Recorder(torch.nn.Module):
    """Returns logits of 2 everywhere."""

    def forward(self, x):
        return torch.full((x.shape[0], 1, *x.shape[2:]), 2.0, requires_grad=True)


def test_oracle_trains_on_the_true_masks_of_the_pooled_set():
    oracle = build_method("oracle", BCELoss())
    assert oracle.streams == {"train": ("noisy", "clean")}
    image = torch.rand(2, 3, 4, 4)
    true = torch.zeros(2, 1, 4, 4)
    noisy = torch.ones(2, 1, 4, 4)
    batch = {"train": {"image": image, "mask": noisy, "true_mask": true}}
    loss = oracle.step(Recorder(), batch, lr=0.1).loss
    logits = torch.full((2, 1, 4, 4), 2.0)
    expected = BCELoss()(logits, true)
    assert torch.allclose(loss, expected) and not torch.allclose(loss, BCELoss()(logits, noisy))
