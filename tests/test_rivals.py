"""The rivals of meta reweighting (noisyseg/rivals): each mechanism on tiny tensors, a CLI smoke run of
each, and resume equality for their state (teacher, second network, correction schedule)."""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from noisyseg.errors import ConfigError
from noisyseg.losses import BCELoss, BCEDiceLoss
from noisyseg.models import build_model
from noisyseg.early_learning import correct_labels, iou_curve, memorisation_started
from noisyseg.rivals.adele import ADELE
from noisyseg.rivals.coteaching import CoTeaching, kept_share, small_loss_mask
from noisyseg.rivals.mtcl import MTCL, confident_errors
from noisyseg.rivals.streams import TwoStreamMethod
from noisyseg.train import train
from test_train import config, interrupt_at_epoch, run_cli


class SpyLoss(BCELoss):
    """BCE that remembers the targets and weights it was called with."""

    def __call__(self, logits, target, weight=None):
        self.target, self.weight = target.detach().clone(), None if weight is None else weight.detach().clone()
        return super().__call__(logits, target, weight)


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("unet", in_channels=3, depth=2, base_width=4, norm="batch", dropout=0.0,
                       dropout_position="bottleneck")


def batches(seed: int = 0, noisy: int = 3, clean: int = 2, size: int = 16) -> dict:
    g = torch.Generator().manual_seed(seed)

    def batch(n):
        true = (torch.rand(n, 1, size, size, generator=g) > 0.5).float()
        mask = torch.where(torch.rand(n, 1, size, size, generator=g) < 0.2, 1 - true, true)
        return {"image": torch.randn(n, 3, size, size, generator=g), "mask": mask, "true_mask": true}

    out = {"noisy": batch(noisy), "clean": batch(clean)}
    out["clean"]["mask"] = out["clean"]["true_mask"].clone()
    return out


# -- the two-stream contract ---------------------------------------------------------------------
def test_batches_mix_expert_images_at_the_configured_or_pooled_share():
    assert TwoStreamMethod(BCELoss(), 0.5).batch_sizes(16) == {"noisy": 8, "clean": 8}
    pooled = TwoStreamMethod(BCELoss(), None)
    with pytest.raises(ConfigError, match="pooled share"):
        pooled.batch_sizes(16)
    pooled.set_stream_sizes({"noisy": 90, "clean": 10})
    assert pooled.batch_sizes(16) == {"noisy": 14, "clean": 2}
    pooled.set_stream_sizes({"noisy": 1000, "clean": 1})
    assert pooled.batch_sizes(16) == {"noisy": 15, "clean": 1}  # never a stream without an image
    with pytest.raises(ConfigError):
        TwoStreamMethod(BCELoss(), 1.0)


# -- ADELE ---------------------------------------------------------------------------------------
def test_correction_flips_only_confident_pixels_of_the_corrected_classes():
    probs = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = (torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    fg_only = correct_labels(probs, labels, 0.7, (False, True))
    assert torch.all(fg_only[fg_only != labels] == 1) and torch.all(probs[fg_only != labels] > 0.7)
    assert torch.equal(fg_only[probs > 0.7], torch.ones_like(probs[probs > 0.7]))
    both = correct_labels(probs, labels, 0.7, (True, True))
    changed = both != labels
    assert torch.all((probs[changed] > 0.7) | (probs[changed] < 0.3))
    assert torch.equal(both[(probs >= 0.3) & (probs <= 0.7)], labels[(probs >= 0.3) & (probs <= 0.7)])
    assert torch.equal(correct_labels(probs, labels, 0.7, (False, False)), labels)


def test_memorisation_onset_is_found_on_a_saturating_iou_curve_only():
    x = np.arange(1, 11, dtype=float)
    saturating = list(iou_curve(x, 0.8, 0.9, 1.0))
    assert memorisation_started(saturating, r=0.9)
    assert not memorisation_started(saturating[:3], r=0.9)  # still steep after three epochs
    assert not memorisation_started(list(0.05 * x[:6]), r=0.9)  # a straight line never flattens
    assert not memorisation_started(saturating[:2], r=0.9, min_epochs=3)


def test_adele_records_iou_per_epoch_and_never_corrects_expert_images():
    spy = SpyLoss()
    method = ADELE(spy, 0.5, tau=0.7, steps_per_epoch=2, scales=[0.5, 1.0])
    model, data = tiny_model(), batches()
    method.step(model, data, 0.01)
    assert method.corrector.history == [[], []]
    method.step(model, data, 0.01)
    history = method.corrector.history
    assert [len(h) for h in history] == [1, 1] and all(0 <= v <= 1 for h in history for v in h)
    method.corrector.start_epoch = [0, 0]  # correcting both classes
    with torch.no_grad():
        model.head.bias.fill_(3.0)  # confident foreground nearly everywhere
    out = method.step(model, data, 0.01)
    n = len(data["noisy"]["image"])
    assert torch.equal(spy.target[n:], data["clean"]["mask"])  # expert masks as given
    assert not torch.equal(spy.target[:n], data["noisy"]["mask"]) and out.logs["adele_changed_fraction"] > 0
    assert out.logs["adele_correcting_foreground"] == 1.0


# -- MTCL ----------------------------------------------------------------------------------------
def test_confident_learning_flags_labels_the_teacher_confidently_contradicts():
    labels = torch.zeros(1, 1, 4, 4)
    labels[..., :2, :] = 1  # top half foreground
    probs = torch.full_like(labels, 0.1)
    probs[..., :2, :] = 0.9
    probs[0, 0, 3, 3] = 0.95  # labelled background, confidently foreground: flagged
    probs[0, 0, 0, 0] = 0.05  # labelled foreground, confidently background: flagged
    probs[0, 0, 3, 0] = 0.4   # labelled background, unsure: kept
    flagged = confident_errors(probs, labels)
    assert flagged[0, 0, 3, 3] and flagged[0, 0, 0, 0] and flagged.sum() == 2


def test_teacher_is_the_ema_of_the_student():
    method = MTCL(BCELoss(), 0.5, ema_decay=0.6)
    model, data = tiny_model(), batches()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    reference = None
    for k in range(4):
        student = [p.detach().clone() for p in model.parameters()]
        alpha = min(1 - 1 / (k + 1), 0.6)
        reference = student if reference is None else [alpha * t + (1 - alpha) * s for t, s in zip(reference, student)]
        optimizer.zero_grad()
        method.step(model, data, 0.1).loss.backward()
        optimizer.step()
        assert all(torch.allclose(t, r, atol=1e-6) for t, r in zip(method.teacher.parameters(), reference))
    assert not any(p.requires_grad for p in method.teacher.parameters())


@pytest.mark.parametrize("mode", ["flip", "weight"])
def test_mtcl_corrects_or_downweights_noisy_pixels_only(mode):
    spy = SpyLoss()
    method = MTCL(spy, 0.5, mode=mode, flagged_weight=0.0)
    model, data = tiny_model(), batches()
    out = method.step(model, data, 0.01)
    n = len(data["noisy"]["image"])
    assert torch.equal(spy.target[n:], data["clean"]["mask"])
    assert out.logs["mtcl_flagged_fraction"] > 0
    if mode == "flip":
        assert not torch.equal(spy.target[:n], data["noisy"]["mask"])
    else:
        assert torch.equal(spy.target, torch.cat([data["noisy"]["mask"], data["clean"]["mask"]]))
        assert (spy.weight[:n] == 0).any() and (spy.weight[n:] == spy.weight[n:].flatten()[0]).all()


# -- co-teaching ---------------------------------------------------------------------------------
def test_kept_share_follows_the_schedule_and_selection_keeps_the_smallest():
    assert [kept_share(s, 0.2, 10) for s in (0, 5, 10, 50)] == pytest.approx([1.0, 0.9, 0.8, 0.8])
    losses = torch.tensor([[0.5, 0.1], [0.9, 0.3]])
    assert small_loss_mask(losses, 0.5).tolist() == [[False, True], [False, True]]
    assert small_loss_mask(losses, 0.6).sum() == 3  # ceil(0.6 * 4)


def test_each_network_trains_on_the_pixels_its_peer_finds_small_loss():
    method = CoTeaching(BCELoss(), 0.5, forget_rate=0.5, rampup_epochs=1, steps_per_epoch=2, init_seed=0)
    model, data = tiny_model(), batches()
    shares = [method.step(model, data, 0.01).logs["coteach_kept_share"] for _ in range(3)]
    assert shares == pytest.approx([1.0, 0.75, 0.5])
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), method.peer.state_dict().values()))
    peer_before = copy.deepcopy(method.peer)
    images = torch.cat([data["noisy"]["image"], data["clean"]["image"]])
    masks = torch.cat([data["noisy"]["mask"], data["clean"]["mask"]])
    with torch.no_grad():
        peer_losses = BCELoss().per_pixel(peer_before(images), masks)
    loss = method.step(model, data, 0.01).loss
    n = len(data["noisy"]["image"])
    keep = torch.ones_like(masks)
    keep[:n] = small_loss_mask(peer_losses[:n], 0.5).float()
    expected = (BCELoss().per_pixel(model(images), masks) * keep).sum() / keep.sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(peer_before.parameters(), method.peer.parameters()))


def test_jocor_gives_each_network_only_its_own_gradient():
    method = CoTeaching(BCEDiceLoss(), 0.5, forget_rate=0.3, rampup_epochs=0, agreement=0.5)
    model, data = tiny_model(), batches()
    method.step(model, data, 0.01).loss.backward()  # would fail if the peer's stepped graph were reached
    assert all(p.grad is not None for p in model.parameters())


# -- end to end: the command line, and resume --------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("method", ["adele", "mtcl", "coteach"])
def test_cli_smoke_run(tmp_path, method):
    out = tmp_path / "run"
    proc = run_cli("debug=fast", "data.params.count=80", f"method={method}", f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["method"]["name"] == method and math.isfinite(results["test"]["dice"])
    assert results["method_state"]["steps"] == 6


@pytest.mark.parametrize("overrides, state_keys", [
    (("arm=adele", "trainer.epochs=5", "method.r=0.05"), ()),
    (("arm=mtcl", "trainer.epochs=3"), ("teacher",)),
    (("arm=coteach_balanced", "trainer.epochs=3"), ("peer", "peer_optimizer")),
])
def test_killed_and_resumed_run_ends_as_the_uninterrupted_one(tmp_path, monkeypatch, overrides, state_keys):
    cfg = config(*overrides)
    full = train(cfg, tmp_path / "full")
    interrupt_at_epoch(cfg, tmp_path / "part", cfg.trainer.epochs - 1, monkeypatch)
    cfg.resume = str(tmp_path / "part")
    resumed = train(cfg)
    assert resumed["test"] == full["test"] and resumed["method_state"] == full["method_state"]
    a, b = (torch.load(tmp_path / run / "last.pt", weights_only=True) for run in ("full", "part"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for key in state_keys:
        saved, restored = a["method"][key], b["method"][key]
        tensors = saved.items() if key != "peer_optimizer" else saved["state"][0].items()
        other = restored if key != "peer_optimizer" else restored["state"][0]
        assert all(torch.equal(v, other[k]) for k, v in tensors if isinstance(v, torch.Tensor))
    if "arm=adele" in overrides:  # the resumed part ran with correction on
        assert full["method_state"]["start_epoch"][1] is not None and full["method_state"]["start_epoch"][1] < 3
