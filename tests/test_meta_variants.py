"""The meta weighting variants (noisyseg/meta/weights.py, weightnet.py; method options in methods.py):
each against its definition, every backend against the others, the learned weighting's meta gradient
against double backward in float64, and the paper's step unchanged."""
import pytest
import torch

from noisyseg.errors import ConfigError
from noisyseg.losses import BCEDiceLoss, BCELoss
from noisyseg.meta import META_BACKENDS, MetaInputError, MetaReweightedLoss, pixel_weights
from noisyseg.meta import reweight as meta_reweight
from noisyseg.meta.weightnet import (LearnedWeighting, WeightNet, boundary_feature, outline_distance,
                                     outline_distance_reference)
from noisyseg.meta.weights import WEIGHTINGS, Pixels, _normalize
from noisyseg.methods import build_method
from tests.test_meta import LR, batches, tiny_unet

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def meta_u(model, loss, noisy, clean, backend="autograd"):
    torch.manual_seed(7)
    grad, problem = meta_reweight._meta_gradient(model, loss.per_pixel, noisy, clean, LR, backend)
    return grad.u, problem


def test_the_default_weighting_is_the_papers_step_bit_for_bit():
    model, (noisy, clean) = tiny_unet(), batches()
    u, _ = meta_u(model, BCEDiceLoss(), noisy, clean, "jvp")
    torch.manual_seed(7)
    w = pixel_weights(model, BCEDiceLoss(), noisy, clean, LR)
    raw = (-u).clamp_min(0)
    assert torch.equal(w, raw / raw.sum())


@pytest.mark.parametrize("weighting", ["sign", "cosine", "centered"])
def test_every_backend_gives_the_same_variant_weights(weighting):
    model, (noisy, clean) = tiny_unet(), batches()
    ref = None
    for backend in META_BACKENDS.names():
        torch.manual_seed(7)
        w = pixel_weights(model, BCEDiceLoss(), noisy, clean, LR, backend=backend, weighting=weighting)
        ref = w if ref is None else ref
        assert (w - ref).abs().max() <= 1e-9 * ref.abs().max(), backend
    assert ref.sum() == pytest.approx(1.0)


def test_sign_and_cosine_follow_their_definitions_for_bce():
    """For BCE, ∂ℓ/∂z = σ(z) − y: cosine is max(−u / |σ − y|, 0), sign is 1[−u > 0]."""
    model, (noisy, clean) = tiny_unet(dropout=0.0), batches()
    u, problem = meta_u(model, BCELoss(), noisy, clean)
    residual = (torch.sigmoid(problem.noisy_logits.detach()) - noisy[1]).abs()
    for weighting, raw in (("sign", (u < 0).double()), ("cosine", (-u / (residual + 1e-6)).clamp_min(0))):
        torch.manual_seed(7)
        w = pixel_weights(model, BCELoss(), noisy, clean, LR, backend="autograd", weighting=weighting)
        torch.testing.assert_close(w, raw / raw.sum(), rtol=1e-9, atol=0)


def test_centered_weights_keep_each_class_at_uniform_on_average():
    """Without clipping, each image's class mean of (1 + step · (a − ā_c)/s) is exactly 1, whatever a
    class-wide bias adds to a; the spread is `step` standard deviations."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64) * 1e-3
    labels = (torch.rand(2, 1, 8, 8, generator=g) > 0.5).double()
    biased = a + 5e-3 * labels  # the whole lesion class agrees more: a global bias
    for agreement in (a, biased):
        w = WEIGHTINGS.get("centered")(agreement, Pixels(labels, center_step=0.1))
        assert (w > 0).all()
        for cls in (labels > 0.5, labels <= 0.5):
            for i in range(2):
                assert w[i][cls[i]].mean() == pytest.approx(1.0, abs=1e-12)
        assert ((w - 1).pow(2).mean((1, 2, 3)).sqrt() == pytest.approx(0.1, abs=1e-12))
    torch.testing.assert_close(WEIGHTINGS.get("centered")(biased, Pixels(labels, center_step=0.1)),
                               WEIGHTINGS.get("centered")(a, Pixels(labels, center_step=0.1)))


def test_class_normalisation_gives_each_class_its_pixel_share():
    g = torch.Generator().manual_seed(1)
    raw = torch.rand(3, 1, 6, 6, generator=g, dtype=torch.float64)
    labels = (torch.rand(3, 1, 6, 6, generator=g) > 0.7).double()
    w = _normalize(raw, "class", labels)
    for i in range(3):
        for cls in (labels[i] > 0.5, labels[i] <= 0.5):
            assert w[i][cls].sum() == pytest.approx(cls.sum().item() / (36 * 3))
    assert w.sum() == pytest.approx(1.0)
    raw[0][labels[0] > 0.5] = 0  # a class whose weights are all zero keeps zero mass
    assert _normalize(raw, "class", labels)[0][labels[0] > 0.5].sum() == 0


@pytest.mark.parametrize("features", [("loss", "probability", "label"), ("loss", "label", "boundary")])
def test_learned_weighting_meta_gradient_is_the_double_backward_of_the_virtual_step(features):
    """d/dφ of the first-order change of the clean loss after θ' = θ − α/N Σ w_i(φ) ∇ℓ_i equals
    1/N Σ_i u_i ∂w_i/∂φ with u from the forward-mode step (float64)."""
    model, (noisy, clean), loss = tiny_unet(dropout=0.0), batches(), BCELoss()
    torch.manual_seed(0)
    learned = LearnedWeighting(hidden=5, features=features)
    torch.nn.init.normal_(learned.net.net[2].weight)  # away from the zero init, so every φ has a gradient
    learned.net.double()
    u, problem = meta_u(model, loss, noisy, clean, "jvp")
    logits = problem.noisy_logits.detach()
    values = loss.per_pixel(logits, noisy[1])
    fast = learned.meta_gradient(u, values, logits, noisy[1])

    params = [p for p in model.parameters()]
    g = torch.autograd.grad(loss.per_pixel(model(clean[0]), clean[1]).mean(), params)
    losses = loss.per_pixel(model(noisy[0]), noisy[1])
    weights = learned.net(values, logits, noisy[1])
    step = torch.autograd.grad((weights * losses).sum() / losses.numel(), params, create_graph=True)
    change = -LR * sum((s * gi).sum() for s, gi in zip(step, g))  # L_c(θ') − L_c(θ) to first order
    slow = torch.autograd.grad(change, list(learned.net.parameters()))
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("shape", [(3, 1, 7, 9), (2, 12, 5)])
@pytest.mark.parametrize("reach", [1, 2, 5])
def test_outline_distance_is_the_chessboard_distance_to_the_other_class(shape, reach):
    torch.manual_seed(reach)
    labels = (torch.rand(shape) < 0.3).double()
    labels[0] = torch.nn.functional.max_pool2d(labels[0].view(-1, 1, *shape[-2:]), 3, 1, 1).view(labels[0].shape)
    labels[-1] = 0.0  # no outline at all: every pixel is `reach` away
    soft = labels * 0.9 + 0.05  # smoothed labels: thresholded at 1/2
    fast = outline_distance(soft, reach)
    torch.testing.assert_close(fast, outline_distance_reference(soft, reach).to(fast.dtype))
    assert fast.shape == labels.shape and (fast[-1] == reach).all()


def test_boundary_feature_is_zero_at_the_outline_and_saturates_inside_and_out():
    labels = torch.zeros(1, 1, 40, 40)
    labels[..., 10:30, 10:30] = 1
    feature = boundary_feature(labels, labels, labels)  # reach: 0.125 of 40 = 5 px
    assert feature[0, 0, 10, 20] == 0 and feature[0, 0, 9, 20] == 0
    assert feature[0, 0, 12, 20] == pytest.approx(2 / 5) and feature[0, 0, 20, 20] == 1 and feature[0, 0, 0, 0] == 1
    with pytest.raises(ConfigError, match="unknown weighting-network feature 'edge'"):
        WeightNet(features=("loss", "edge"))
    with pytest.raises(ConfigError, match="distinct"):
        WeightNet(features=("loss", "loss"))


def test_boundary_reach_is_an_option_from_the_method_down_to_the_feature():
    labels = torch.zeros(1, 1, 40, 40)
    labels[..., 10:30, 10:30] = 1
    wide = boundary_feature(labels, labels, labels, reach=0.25)  # 10 px
    assert wide[0, 0, 12, 20] == pytest.approx(2 / 10) and wide[0, 0, 15, 20] == pytest.approx(5 / 10)
    method = build_method("meta", BCELoss(), weighting="mwn", weight_net_features=["label", "boundary"],
                          weight_net_boundary_reach=0.25)
    inputs = method.meta_loss.learned.net.inputs(labels, labels, labels)
    torch.testing.assert_close(inputs[..., 1], wide)
    with pytest.raises(ConfigError, match="reach 0 must be a share of the image side in"):
        WeightNet(features=("boundary",), boundary_reach=0)


def test_learned_weighting_trains_resumes_and_refuses_the_stateless_api():
    model, (noisy, clean) = tiny_unet(torch.float32, dropout=0.0), batches(torch.float32)
    method = build_method("meta", BCELoss(), weighting="mwn", weight_net_lr=0.05,
                          weight_net_features=["loss", "probability", "label", "boundary"])
    before = [p.clone() for p in method.meta_loss.learned.net.parameters()]
    batch = {"noisy": {"image": noisy[0], "mask": noisy[1], "true_mask": noisy[1]},
             "clean": {"image": clean[0], "mask": clean[1], "true_mask": clean[1]}}
    out = method.step(model, batch, lr=0.1)
    assert out.loss is not None and torch.isfinite(out.loss)
    after = list(method.meta_loss.learned.net.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
    resumed = build_method("meta", BCELoss(), weighting="mwn", weight_net_lr=0.05,
                           weight_net_features=["loss", "probability", "label", "boundary"])
    resumed.load_state_dict(method.state_dict())
    for a, b in zip(resumed.meta_loss.learned.net.parameters(), after):
        assert torch.equal(a, b)
    with pytest.raises(MetaInputError, match="MetaReweightedLoss"):
        pixel_weights(model, BCELoss(), noisy, clean, LR, weighting="mwn")
    with pytest.raises(MetaInputError, match="weighting='nope'"):
        MetaReweightedLoss(BCELoss(), LR, weighting="nope")


def test_mean_normalisation_keeps_the_learned_weights_level():
    """normalize=mean: the real step is mean(w̃ ℓ) with w̃ the weighting network's output, the step the
    meta gradient of φ above is derived for; a net that lowers every weight lowers the noisy batch's share."""
    model, (noisy, clean) = tiny_unet(dropout=0.0), batches()
    meta = MetaReweightedLoss(BCELoss().per_pixel, LR, normalize="mean", weighting="mwn")
    meta.learned.net.double()
    torch.manual_seed(7)
    result = meta(model, noisy, clean)
    with torch.no_grad():
        raw = meta.learned.net(result.losses, result.logits, noisy[1])  # the net after its meta update
    torch.testing.assert_close(result.weights, raw / raw.numel(), rtol=1e-12, atol=0)
    torch.testing.assert_close(result.loss, (raw * result.losses).mean(), rtol=1e-12, atol=0)
    assert 0 < result.weights.sum() < 1  # not renormalised to 1
    w = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    assert torch.equal(_normalize(w, "mean"), w / 32)


def test_bootstrap_trains_zeroed_pixels_on_the_models_own_prediction():
    model, (noisy, clean) = tiny_unet(torch.float64, dropout=0.0), batches()
    batch = {"noisy": {"image": noisy[0], "mask": noisy[1], "true_mask": noisy[1]},
             "clean": {"image": clean[0], "mask": clean[1], "true_mask": clean[1]}}
    plain, boot = (build_method("meta", BCELoss(), bootstrap=b) for b in (0.0, 0.5))
    torch.manual_seed(3)
    base = plain.step(model, batch, lr=LR)
    torch.manual_seed(3)
    out = boot.step(model, batch, lr=LR)
    weights = boot.last["weights"]
    assert 0 < (weights == 0).double().mean() < 1
    with torch.no_grad():
        logits = model(noisy[0])
        zeroed = (weights == 0).double()
        extra = (zeroed * BCELoss().per_pixel(logits, (logits > 0).double())).sum() / zeroed.numel()
    torch.testing.assert_close(out.loss.detach(), base.loss.detach() + 0.5 * extra, rtol=1e-10, atol=0)


def test_label_correction_before_the_meta_step_starts_at_the_onset_and_spares_expert_masks():
    """meta.correct: ADELE's early-learning correction (noisyseg/early_learning.py) rewrites the noisy
    batch's labels once a class is found memorised; before that the step is the plain meta step."""
    model, (noisy, clean) = tiny_unet(torch.float64, dropout=0.0), batches()
    batch = {"noisy": {"image": noisy[0], "mask": noisy[1].clone(), "true_mask": noisy[1]},
             "clean": {"image": clean[0], "mask": clean[1].clone(), "true_mask": clean[1]}}
    plain, correcting = build_method("meta", BCELoss()), build_method("meta", BCELoss(), correct=True, steps_per_epoch=2)
    torch.manual_seed(3)
    base = plain.step(model, batch, lr=LR)
    torch.manual_seed(3)
    out = correcting.step(model, batch, lr=LR)
    assert torch.equal(out.loss, base.loss) and out.logs["correct_correcting_foreground"] == 0.0
    correcting.step(model, batch, lr=LR)  # the first epoch's end: one IoU per class, no onset yet
    assert [len(h) for h in correcting.corrector.history] == [1, 1] and not any(correcting.corrector.correcting)
    correcting.corrector.start_epoch = [None, 0]  # the foreground found memorised
    with torch.no_grad():
        model.head.bias.fill_(2.0)  # confident foreground in places
        probs = torch.sigmoid(model(noisy[0]))
    out = correcting.step(model, batch, lr=LR)
    expected = noisy[1].clone()
    expected[probs > 0.7] = 1.0  # only confident pixels, only towards the memorised class
    assert torch.equal(correcting.last["mask"], expected) and not torch.equal(expected, noisy[1])
    assert out.logs["correct_changed_fraction"] > 0 and out.logs["correct_correcting_foreground"] == 1.0
    assert torch.equal(batch["noisy"]["mask"], noisy[1]) and torch.equal(batch["clean"]["mask"], clean[1])  # untouched
    resumed = build_method("meta", BCELoss(), correct=True, steps_per_epoch=2)
    resumed.load_state_dict(correcting.state_dict())
    assert resumed.corrector.state_dict() == correcting.corrector.state_dict()


def test_the_whole_clean_set_in_every_meta_step():
    method = build_method("meta", BCELoss(), clean_batch_size="all")
    with pytest.raises(ConfigError, match="stream"):
        method.batch_sizes(8)
    method.set_stream_sizes({"noisy": 100, "clean": 12})
    assert method.batch_sizes(8) == {"noisy": 8, "clean": 12}
    with pytest.raises(ConfigError, match="'all'"):
        build_method("meta", BCELoss(), clean_batch_size=0)


def test_weight_memory_undoes_flips_and_rotations_exactly():
    """A weight written through an augmented view lands on the same image pixel as seen un-augmented."""
    import albumentations as A
    import numpy as np

    from noisyseg.data.dataset import SegmentationDataset
    from noisyseg.meta.memory import WeightMemory

    images = np.zeros((2, 4, 4, 3), np.uint8)
    maps = {"mask": np.zeros((2, 4, 4), np.uint8)}
    plain = SegmentationDataset(images, maps, origin=True)
    turned = SegmentationDataset(images, maps, A.Compose([A.HorizontalFlip(p=1), A.RandomRotate90(p=1)]), origin=True)
    identity, view = plain[1]["origin"][None], turned[(1, 5)]["origin"][None]
    assert not torch.equal(identity, view) and sorted(view.flatten().tolist()) == list(range(16))
    memory = WeightMemory(images=2, pixels=16, momentum=0.0)
    weights = torch.arange(16.0).reshape(1, 1, 4, 4)  # a weight per augmented pixel
    memory.update(torch.tensor([1]), view, weights / weights.sum())
    back = memory.recall(torch.tensor([1]), view, total=weights.sum())
    torch.testing.assert_close(back, weights)  # read through the same view: the same weights
    stored = memory.recall(torch.tensor([1]), identity, total=weights.sum())
    for k in range(16):  # the pixel shown at augmented position k came from image pixel view[k]
        assert stored.flatten()[int(view.flatten()[k])] == weights.flatten()[k]


def test_weight_memory_averages_visits_and_freezes():
    from noisyseg.meta.memory import WeightMemory

    memory = WeightMemory(images=1, pixels=4, momentum=0.5, freeze_after=2)
    index, origin = torch.tensor([0]), torch.arange(4.0).reshape(1, 1, 2, 2)
    first, second = torch.tensor([1.0, 0, 0, 1]).reshape(1, 1, 2, 2), torch.tensor([1.0, 1, 0, 0]).reshape(1, 1, 2, 2)
    memory.update(index, origin, first / 2)
    out = memory.update(index, origin, second / 2)
    relative = 0.5 * first * 2 + 0.5 * second * 2  # stored relative weights: [2, 1, 0, 1]
    torch.testing.assert_close(out, relative / relative.sum())
    assert memory.frozen
    torch.testing.assert_close(memory.update(index, origin, first / 2), out)  # frozen: unchanged


def test_meta_memory_trains_through_the_build_layer_and_resumes(tmp_path):
    from noisyseg.build import build_data, build_trainer
    from noisyseg.config import compose

    cfg = compose("debug=fast", "method=meta", "meta.memory=0.5", "meta.memory_freeze_after=2", "trainer.progress=false",
                  f"cache_dir={tmp_path / 'cache'}")
    arrays, _ = build_data(cfg, tmp_path)
    parts = build_trainer(cfg, arrays)
    assert "origin" in parts.streams["noisy"][0]
    parts.trainer.train_epoch(0)
    method = parts.method
    assert method.memory is not None and method.memory.frozen and method.memory.seen.any()
    resumed = build_method("meta", BCELoss(), memory=0.5, memory_freeze_after=2)
    resumed.load_state_dict(method.state_dict())
    assert torch.equal(resumed.memory.values, method.memory.values) and resumed.memory.frozen
    with pytest.raises(ConfigError, match="memory"):
        build_method("meta", BCELoss(), memory_freeze_after=3)


def test_weight_memory_refuses_batches_of_another_size():
    from noisyseg.meta.memory import WeightMemory

    memory = WeightMemory(images=1, pixels=4, momentum=0.5)
    with pytest.raises(ConfigError, match="keep the image size"):
        memory.update(torch.tensor([0]), torch.arange(9.0).reshape(1, 1, 3, 3), torch.full((1, 1, 3, 3), 1 / 9))
