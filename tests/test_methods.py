"""Training methods: which streams each draws from and what its step trains on."""
from __future__ import annotations

import pytest
import torch

from noisyseg.errors import ConfigError
from noisyseg.losses import BCEDiceLoss, BCELoss
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


def test_balanced_splits_one_batch_or_draws_a_whole_one_per_stream_and_weighs_the_noisy_loss():
    plain, full = build_method("balanced", BCELoss()), build_method("balanced", BCELoss(), stream_batch="full")
    assert plain.batch_sizes(8) == {"noisy": 4, "clean": 4} and full.batch_sizes(8) == {"noisy": 8, "clean": 8}
    g = torch.Generator().manual_seed(0)
    batch = {name: {"image": torch.rand(3, 3, 4, 4, generator=g),
                    "mask": (torch.rand(3, 1, 4, 4, generator=g) > 0.5).float()} for name in ("noisy", "clean")}
    model = torch.nn.Conv2d(3, 1, 1)
    logits = model(torch.cat([batch["noisy"]["image"], batch["clean"]["image"]]))
    masks = torch.cat([batch["noisy"]["mask"], batch["clean"]["mask"]])
    loss = BCEDiceLoss()
    assert torch.equal(build_method("balanced", loss).step(model, batch, 0.1).loss, loss(logits, masks))  # unchanged
    down = build_method("balanced", loss, noisy_weight=0.25).step(model, batch, 0.1).loss
    torch.testing.assert_close(down, (0.25 * loss(logits[:3], masks[:3]) + loss(logits[3:], masks[3:])) / 1.25)
    norm = torch.nn.Sequential(torch.nn.Conv2d(3, 1, 1), torch.nn.BatchNorm2d(1))  # statistics per pass
    separate = build_method("balanced", loss, noisy_weight=0.25, forward="separate").step(norm, batch, 0.1).loss
    parts = [loss(norm(batch[k]["image"]), batch[k]["mask"]) for k in ("noisy", "clean")]
    torch.testing.assert_close(separate, (0.25 * parts[0] + parts[1]) / 1.25)
    for bad in ({"noisy_weight": 1.5}, {"stream_batch": "half"}, {"forward": "both"}):
        with pytest.raises(ConfigError, match="method=balanced needs"):
            build_method("balanced", BCELoss(), **bad)
    with pytest.raises(ConfigError, match="method=dual_batch needs"):  # the method the user configured
        build_method("dual_batch", BCELoss(), noisy_weight=2.0)


def test_dual_batch_is_balanced_with_the_recommended_options():
    dual = build_method("dual_batch", BCELoss())
    assert (dual.noisy_weight, dual.stream_batch, dual.forward) == (0.5, "full", "separate")
    assert dual.batch_sizes(8) == {"noisy": 8, "clean": 8}


def test_finetune_takes_dual_batch_steps_then_expert_batches_only_and_resumes_its_phase():
    g = torch.Generator().manual_seed(0)
    batch = {name: {"image": torch.rand(3, 3, 4, 4, generator=g),
                    "mask": (torch.rand(3, 1, 4, 4, generator=g) > 0.5).float()} for name in ("noisy", "clean")}
    model, loss = torch.nn.Conv2d(3, 1, 1), BCEDiceLoss()
    tune = build_method("finetune", loss, switch=0.5, epochs=2, steps_per_epoch=2)  # 2 of 4 steps pretrain
    assert tune.batch_sizes(8) == {"noisy": 8, "clean": 8}
    dual = build_method("dual_batch", loss).step(model, batch, 0.1).loss
    expert = loss(model(batch["clean"]["image"]), batch["clean"]["mask"])
    losses = [tune.step(model, batch, 0.1) for _ in range(3)]
    assert [out.loss.item() for out in losses] == [dual.item(), dual.item(), expert.item()]
    assert losses[2].logs == {"finetune_phase": 2.0} and not losses[0].logs
    resumed = build_method("finetune", loss, switch=0.5, epochs=2, steps_per_epoch=2)
    resumed.load_state_dict(tune.state_dict())
    assert resumed.step(model, batch, 0.1).loss.item() == expert.item()
    assert build_method("finetune", loss, switch=0.0).step(model, batch, 0.1).loss.item() == expert.item()
    with pytest.raises(ConfigError, match="method=finetune needs switch"):
        build_method("finetune", loss, switch=1.5)
