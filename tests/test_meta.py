"""Meta-learned pixel weights: backends against each other and finite differences, invariants,
side effects, a known-answer case, MetaReweightedLoss and bad input. Tiny U-Nets, 16x16 images."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from noisyseg.errors import ConfigError, NoisysegError
from noisyseg.losses import BCEDiceLoss, BCELoss
from noisyseg.meta import META_BACKENDS, MetaInputError, MetaReweightedLoss, pixel_weights
from noisyseg.meta import backends as meta_backends
from noisyseg.meta import problem as meta_problem
from noisyseg.meta import reweight as meta_reweight
from noisyseg.meta import weights as meta_weights
from noisyseg.models import UNet

BACKENDS = META_BACKENDS.names()
LR = 0.1


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_unet(dtype=torch.float64, dropout=0.3, seed=0, norm="batch", position="decoder", device="cpu"):
    torch.manual_seed(seed)
    return UNet(depth=2, base_width=4, norm=norm, dropout=dropout, dropout_position=position).to(device, dtype).train()


def batches(dtype=torch.float64, b_noisy=3, b_clean=2, size=16, seed=1, device="cpu"):
    g = torch.Generator().manual_seed(seed)  # drawn on the CPU: the same batches on every device
    noisy = (torch.randn(b_noisy, 3, size, size, generator=g, dtype=dtype).to(device),
             (torch.rand(b_noisy, 1, size, size, generator=g) > 0.5).to(device, dtype))
    clean = (torch.randn(b_clean, 3, size, size, generator=g, dtype=dtype).to(device),
             (torch.rand(b_clean, 1, size, size, generator=g) > 0.5).to(device, dtype))
    return noisy, clean


def weights_and_rng(backend, model, loss_fn, noisy, clean, normalize="batch", seed=7):
    torch.manual_seed(seed)
    w = pixel_weights(model, loss_fn, noisy, clean, LR, backend=backend, normalize=normalize)
    return w, torch.get_rng_state()


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_backends_agree_float64(mode):
    model = tiny_unet()
    model.train(mode == "train")
    noisy, clean = batches()
    ref, ref_rng = weights_and_rng("autograd", model, BCEDiceLoss(), noisy, clean)
    assert ref.sum() > 0
    for backend in BACKENDS:
        w, rng = weights_and_rng(backend, model, BCEDiceLoss(), noisy, clean)
        assert (w - ref).abs().max() <= 1e-10, backend
        assert torch.equal(rng, ref_rng), f"{backend} consumes the global RNG differently"


def test_backends_agree_float32():
    model = tiny_unet(torch.float32)
    noisy, clean = batches(torch.float32)
    ref, _ = weights_and_rng("autograd", model, BCELoss(), noisy, clean)
    for backend in BACKENDS:
        w, _ = weights_and_rng(backend, model, BCELoss(), noisy, clean)
        # weights average 1/768 here; float32 reassociation moves them by ~1e-9
        assert (w - ref).abs().max() <= 1e-6 * ref.max(), backend


def test_finite_differences_of_clean_loss_along_eps():
    """u_i = dL_c(θ - α ε_i ∇ℓ_i)/dε_i, by central differences in float64, BN and dropout active."""
    model, loss = tiny_unet(), BCELoss()
    noisy, clean = batches()
    torch.manual_seed(3)
    grad, problem = meta_reweight._meta_gradient(model, loss, noisy, clean, LR, "jvp")
    noisy_seed, clean_seed = problem.seeds
    params = meta_problem._trainable(model)

    def clean_loss(theta):  # BN sees the same clean batch, dropout the same mask, as the meta step
        return meta_problem._loss_map(problem, theta, clean, clean_seed).mean()

    losses = meta_problem._loss_map(problem, params, noisy, noisy_seed).flatten()  # same noisy batch for BN
    u = grad.u.flatten()
    pixels = torch.cat([u.abs().topk(3).indices, torch.tensor([0, 100, 700])])
    h = 1e-6  # ‖∇ℓ_i‖ is large for the top pixels: larger steps cross ReLU/max-pool kinks
    for i in pixels.tolist():
        g_i = torch.autograd.grad(losses[i], list(params.values()), retain_graph=True)
        with torch.no_grad():
            plus = clean_loss({n: p - LR * h * g for (n, p), g in zip(params.items(), g_i)})
            minus = clean_loss({n: p + LR * h * g for (n, p), g in zip(params.items(), g_i)})
        fd = (plus - minus) / (2 * h)
        assert fd.item() == pytest.approx(u[i].item(), rel=1e-6, abs=1e-10), i


@pytest.mark.parametrize("backend", BACKENDS)
def test_weights_nonnegative_and_normalised(backend):
    model = tiny_unet()
    noisy, clean = batches()
    batch_w, _ = weights_and_rng(backend, model, BCELoss(), noisy, clean, "batch")
    image_w, _ = weights_and_rng(backend, model, BCELoss(), noisy, clean, "image")
    raw, _ = weights_and_rng(backend, model, BCELoss(), noisy, clean, "none")
    assert batch_w.shape == noisy[1].shape and not batch_w.requires_grad
    assert (batch_w >= 0).all() and (image_w >= 0).all() and (raw >= 0).all()
    assert batch_w.sum().item() == pytest.approx(1.0, abs=1e-12)
    per_image = image_w.flatten(1).sum(1)
    assert torch.allclose(per_image, torch.full_like(per_image, 1 / 3), atol=1e-12)
    assert torch.allclose(raw / raw.sum(), batch_w, atol=1e-15)


def test_normalise_zero_sums_stay_zero():
    w = torch.zeros(2, 1, 2, 2)
    w[0, 0, 0, 0], w[0, 0, 1, 1] = 1.0, 3.0
    assert torch.equal(meta_weights._normalize(torch.zeros_like(w), "batch"), torch.zeros_like(w))
    image = meta_weights._normalize(w, "image")
    assert image[0].sum().item() == pytest.approx(0.5) and image[0, 0, 1, 1].item() == pytest.approx(0.375)
    assert torch.equal(image[1], torch.zeros_like(w[1]))


def snapshot(model, opt):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            {n: p.grad.clone() for n, p in model.named_parameters()},
            copy.deepcopy(opt.state_dict()), model.training)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_side_effects(backend):
    model = tiny_unet()
    noisy, clean = batches()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    BCELoss()(model(noisy[0]), noisy[1]).backward()
    opt.step()  # momentum state, grads and BN statistics that must all survive untouched
    before = snapshot(model, opt)
    assert before[0]["downs.0.1.num_batches_tracked"].item() == 1
    pixel_weights(model, BCELoss(), noisy, clean, LR, backend=backend)
    after = snapshot(model, opt)
    for k in before[0]:
        assert torch.equal(before[0][k], after[0][k]), k
    for k in before[1]:
        assert torch.equal(before[1][k], after[1][k]), k
    assert str(before[2]) == str(after[2]) and before[3] == after[3]


def lesions(n, size=16, seed=0):
    """Bright discs on darker skin: an easy task, so a few clean steps give meaningful gradients."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    c = torch.randint(5, size - 5, (n, 2), generator=g)
    r = torch.randint(3, 6, (n,), generator=g)
    masks = (((yy - c[:, :1, None]) ** 2 + (xx - c[:, 1:, None]) ** 2) < r[:, None, None] ** 2).float()[:, None]
    images = masks.expand(n, 3, size, size) * torch.tensor([0.8, -0.5, -0.3])[:, None, None]
    return images + 0.3 * torch.randn(n, 3, size, size, generator=g), masks


def test_known_answer_flipped_pixels_get_lower_weight():
    torch.manual_seed(0)
    model = UNet(depth=2, base_width=8, norm="batch").train()
    images, masks = lesions(8)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(30):  # brief clean pre-training
        opt.zero_grad()
        BCELoss()(model(images), masks).backward()
        opt.step()
    flipped = torch.rand(masks.shape, generator=torch.Generator().manual_seed(1)) < 0.5
    noisy = (images, torch.where(flipped, 1 - masks, masks))
    w = pixel_weights(model, BCELoss(), noisy, (images, masks), lr=0.01)
    assert w[flipped].mean() < 0.1 * w[~flipped].mean()  # about 0.01 in practice


@pytest.mark.parametrize("backend", BACKENDS)
def test_reweighted_loss_matches_manual_weights(backend):
    m1, m2 = tiny_unet(), tiny_unet()
    noisy, clean = batches()
    torch.manual_seed(5)
    result = MetaReweightedLoss(BCELoss(), LR, backend=backend)(m1, noisy, clean)
    assert result.status == "ok" and not result.weights.requires_grad
    result.loss.backward()

    torch.manual_seed(5)
    w = pixel_weights(m2, BCELoss(), noisy, clean, LR, backend=backend)
    torch.manual_seed(5)
    noisy_seed, _ = meta_problem._draw_seeds()
    with meta_problem._seeded(noisy_seed, noisy[0].device):  # the dropout mask the weights belong to
        (w * BCELoss().per_pixel(m2(noisy[0]), noisy[1])).sum().backward()
    assert torch.allclose(result.weights, w, rtol=0, atol=1e-15)
    for (n, p1), p2 in zip(m1.named_parameters(), m2.parameters()):
        assert torch.allclose(p1.grad, p2.grad, rtol=1e-10, atol=1e-14), n
    for (n, b1), b2 in zip(m1.named_buffers(), m2.buffers()):  # BN statistics updated exactly once
        assert torch.allclose(b1, b2, rtol=0, atol=1e-15), n


def test_reweighted_loss_lr_override():
    model = tiny_unet()
    noisy, clean = batches()
    loss = MetaReweightedLoss(BCELoss(), LR, normalize="none")
    torch.manual_seed(0)
    w = loss(model, noisy, clean, lr=2 * LR).weights
    torch.manual_seed(0)
    assert torch.allclose(w, 2 * loss(model, noisy, clean).weights, atol=1e-15)


def test_all_zero_weights_policy():
    def flat(logits, masks):  # per-pixel map whose gradient is zero: no pixel can help the clean loss
        return logits * 0 + masks

    model = tiny_unet()
    noisy, clean = batches()
    skipped = MetaReweightedLoss(flat, LR, zero_policy="skip")(model, noisy, clean)
    assert skipped.status == "all_zero" and skipped.loss is None and not skipped.weights.any()
    uniform = MetaReweightedLoss(flat, LR, zero_policy="uniform")(model, noisy, clean)
    assert uniform.status == "all_zero" and uniform.loss.item() == pytest.approx(noisy[1].mean().item())


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_meta_gradient_skips_the_step(backend):
    model = tiny_unet()
    noisy, (images, masks) = batches()
    masks = masks.clone()
    masks[0, 0, 0, 0] = float("nan")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    meta_loss = MetaReweightedLoss(BCELoss(), LR, backend=backend)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        result = meta_loss(model, noisy, (images, masks))
    assert result.status == "non_finite" and result.loss is None and not result.weights.any()
    assert meta_loss.counts["non_finite"] == 1
    with pytest.warns(RuntimeWarning, match="non-finite"):
        assert not pixel_weights(model, BCELoss(), noisy, (images, masks), LR, backend=backend).any()
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_any_module_works():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout2d(0.2),
                          nn.Conv2d(4, 1, 1)).double()
    model[0].bias.requires_grad_(False)  # frozen parameters are constants of the virtual step
    noisy, clean = batches()
    ref, _ = weights_and_rng("autograd", model, BCELoss(), noisy, clean)
    for backend in BACKENDS:
        w, _ = weights_and_rng(backend, model, BCELoss(), noisy, clean)
        assert (w - ref).abs().max() <= 1e-10, backend
    torch.manual_seed(0)
    result = MetaReweightedLoss(BCELoss(), LR)(model, noisy, clean)
    result.loss.backward()
    assert model[0].weight.grad is not None and model[0].bias.grad is None


def test_bad_input():
    model = tiny_unet()
    noisy, (images, masks) = batches()
    with pytest.raises(MetaInputError, match="channels"):
        pixel_weights(model, BCELoss(), noisy, (images[:, :1], masks), LR)
    with pytest.raises(MetaInputError, match="spatial size"):
        pixel_weights(model, BCELoss(), noisy, (images[..., :8, :8], masks[..., :8, :8]), LR)
    with pytest.raises(MetaInputError, match="per-pixel"):
        pixel_weights(model, lambda logits, y: F.binary_cross_entropy_with_logits(logits, y), noisy,
                      (images, masks), LR)
    with pytest.raises(ConfigError, match="jvp"):
        pixel_weights(model, BCELoss(), noisy, (images, masks), LR, backend="nope")
    with pytest.raises(ConfigError, match="autograd, higher, jvp"):
        MetaReweightedLoss(BCELoss(), LR, backend="nope")
    with pytest.raises(MetaInputError, match="normalize"):
        pixel_weights(model, BCELoss(), noisy, (images, masks), LR, normalize="pixel")
    with pytest.raises(MetaInputError, match="zero_policy"):
        MetaReweightedLoss(BCELoss(), LR, zero_policy="retry")
    with pytest.raises(MetaInputError, match="lr"):
        pixel_weights(model, BCELoss(), noisy, (images, masks), 0.0)
    assert issubclass(MetaInputError, NoisysegError) and issubclass(MetaInputError, ValueError)


@pytest.mark.parametrize("params", [["head"], ["ups.1", "head"]])
def test_virtual_step_on_some_parameters_matches_its_reference(params):
    """``params``: the virtual step moves only those parameters; jvp, jvp_ad_fused and double backward agree."""
    model = tiny_unet()
    noisy, clean = batches()
    torch.manual_seed(7)
    ref = pixel_weights(model, BCEDiceLoss(), noisy, clean, LR, backend="autograd", params=params)
    for backend in ("jvp", "jvp_ad_fused"):
        torch.manual_seed(7)
        w = pixel_weights(model, BCEDiceLoss(), noisy, clean, LR, backend=backend, params=params)
        assert (w - ref).abs().max() <= 1e-10, backend
    torch.manual_seed(7)
    exact = pixel_weights(model, BCEDiceLoss(), noisy, clean, LR)
    assert (exact - ref).abs().max() > 1e-6  # an approximation: not the exact weights


def test_virtual_step_on_some_parameters_trains_every_parameter():
    m1, m2 = tiny_unet(), tiny_unet()
    noisy, clean = batches()
    torch.manual_seed(5)
    result = MetaReweightedLoss(BCELoss(), LR, backend="jvp_ad_fused", params=["head"])(m1, noisy, clean)
    result.loss.backward()
    torch.manual_seed(5)
    noisy_seed, _ = meta_problem._draw_seeds()
    with meta_problem._seeded(noisy_seed, noisy[0].device):
        (result.weights * BCELoss().per_pixel(m2(noisy[0]), noisy[1])).sum().backward()
    for (n, p1), p2 in zip(m1.named_parameters(), m2.parameters()):
        assert torch.allclose(p1.grad, p2.grad, rtol=1e-10, atol=1e-14), n


def test_virtual_step_parameters_must_exist_and_need_a_capable_backend():
    model = tiny_unet()
    noisy, clean = batches()
    with pytest.raises(MetaInputError, match="match no trainable parameter"):
        pixel_weights(model, BCELoss(), noisy, clean, LR, params=["decoder_head"])
    with pytest.raises(MetaInputError, match="needs backend"):
        pixel_weights(model, BCELoss(), noisy, clean, LR, backend="higher", params=["head"])


def test_bfloat16_autocast_weights_stay_close_to_float32():
    """AMP (trainer.amp) runs the whole meta step under bf16 autocast, the forward-mode pass included.
    bf16 keeps 8 bits of mantissa, so the weights move (relative L1 ~0.18 here) as much as the literal
    double-backward recipe's do under bf16; jvp and the reference stay close to each other."""
    torch.manual_seed(0)
    model = UNet(depth=3, base_width=8).train()
    noisy, clean = batches(torch.float32, b_noisy=4, b_clean=4, size=32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(20):  # a briefly trained model, so that the weights carry information
        opt.zero_grad()
        BCELoss()(model(clean[0]), clean[1]).backward()
        opt.step()
    torch.manual_seed(1)
    exact = pixel_weights(model, BCELoss(), noisy, clean, LR)
    low = {}
    for backend in ("jvp", "autograd"):
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low[backend] = pixel_weights(model, BCELoss(), noisy, clean, LR, backend=backend).float()
    for w in low.values():
        assert (w - exact).abs().sum() / exact.abs().sum() < 0.3
        assert ((w > 0) == (exact > 0)).float().mean() > 0.9
    assert (low["jvp"] - low["autograd"]).abs().sum() / exact.abs().sum() < 0.05


class Sine(nn.Module):
    def forward(self, x):
        return torch.sin(x)  # no tangent rule in noisyseg.tangents


@pytest.mark.filterwarnings("error::RuntimeWarning")  # a fallback to forward_ad would warn
@pytest.mark.parametrize("norm,position", [("batch", "bottleneck"), ("group", "decoder"), ("none", "head")])
def test_jvp_runs_our_unet_on_its_tangent_rules(norm, position):
    """The default backend needs no torch.forward_ad fallback for noisyseg's U-Net and losses, in train
    and eval mode and under bf16 autocast (a fallback would warn), and the fused step's gradient is
    that of the separate weighted forward."""
    meta_backends._WARNED.clear()  # a fallback warns once per process: make it visible in every case
    torch.manual_seed(0)
    model = UNet(depth=2, base_width=4, norm=norm, dropout=0.3, dropout_position=position).double()
    noisy, clean = batches()
    for train in (True, False):
        model.train(train)
        for _ in range(2):  # the second call replays the recorded tangent plan
            weights_and_rng("jvp", model, BCEDiceLoss(), noisy, clean)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pixel_weights(model.float(), BCELoss(), tuple(t.float() for t in noisy), tuple(t.float() for t in clean), LR)
    model.double().train()
    m1, m2 = copy.deepcopy(model), copy.deepcopy(model)
    torch.manual_seed(3)
    fused = MetaReweightedLoss(BCEDiceLoss(), LR)(m1, noisy, clean)
    torch.manual_seed(3)
    separate = MetaReweightedLoss(BCEDiceLoss(), LR, backend="jvp_ad")(m2, noisy, clean)
    fused.loss.backward()
    separate.loss.backward()
    for (name, a), b in zip(m1.named_parameters(), m2.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-10, atol=1e-14), name
    for a, b in zip(m1.buffers(), m2.buffers()):  # BN statistics updated once, identically
        assert torch.equal(a, b)


def test_jvp_falls_back_to_forward_ad_for_an_op_without_a_rule():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), Sine(), nn.Conv2d(4, 1, 1)).double()
    noisy, clean = batches()
    ref, _ = weights_and_rng("autograd", model, BCELoss(), noisy, clean)
    meta_backends._WARNED.clear()
    with pytest.warns(RuntimeWarning, match="no tangent rule for aten.sin"):
        w, _ = weights_and_rng("jvp", model, BCELoss(), noisy, clean)
    assert (w - ref).abs().max() <= 1e-10


def test_jvp_under_autocast_matches_forward_ad_on_every_call():
    """Autocast caches the casts of parameters; the fused pass must still see them (recorded plan or not)."""
    check_autocast_matches_forward_ad("cpu")


def check_autocast_matches_forward_ad(device: str) -> None:
    """bf16 autocast on ``device``: jvp's weights stay close to jvp_ad's, on the recorded and the replayed call."""
    torch.manual_seed(0)
    model = UNet(depth=2, base_width=4).to(device).train()
    noisy, clean = batches(torch.float32, device=device)
    models = {backend: copy.deepcopy(model) for backend in ("jvp", "jvp_ad")}
    with torch.autocast(device, dtype=torch.bfloat16):
        for _ in range(2):  # the first jvp call records the tangent plan, the second replays it
            got = {}
            for backend, m in models.items():
                torch.manual_seed(5)
                got[backend] = MetaReweightedLoss(BCELoss(), LR, backend=backend)(m, noisy, clean).weights.float()
            assert (got["jvp"] - got["jvp_ad"]).abs().sum() / got["jvp_ad"].abs().sum() < 0.02


def test_clean_every_reuses_the_clean_gradient_between_refreshes():
    """clean_every=k: g comes from every k-th call's clean batch; calls in between ignore theirs."""
    model = tiny_unet(dropout=0.0)  # so g does not depend on the clean pass's dropout seed
    noisy, clean = batches()
    _, other_clean = batches(seed=9)
    exact = MetaReweightedLoss(BCELoss(), LR)
    reused = MetaReweightedLoss(BCELoss(), LR, clean_every=2)
    for call, clean_batch in enumerate([clean, other_clean, other_clean]):
        torch.manual_seed(call)
        got = reused(model, noisy, clean_batch).weights
        torch.manual_seed(call)
        # calls 0 and 2 refresh g from their own clean batch; call 1 reuses call 0's (a frozen model here)
        want = exact(model, noisy, clean if call == 1 else clean_batch).weights
        assert (got - want).abs().max() <= 1e-12, call
    assert reused.calls == 3 and reused.clean_gradient is not None


def test_clean_every_state_round_trip_and_bad_values():
    from noisyseg.losses import BCELoss as Loss
    from noisyseg.methods import build_method

    model = tiny_unet()
    noisy, clean = batches()
    method = build_method("meta", Loss(), clean_every=3)
    method.meta_loss(model, noisy, clean, lr=LR)
    state = method.state_dict()
    resumed = build_method("meta", Loss(), clean_every=3)
    resumed.load_state_dict(state)
    assert resumed.meta_loss.calls == 1
    assert all(torch.equal(a, state["clean_gradient"][n]) for n, a in resumed.meta_loss.clean_gradient.items())
    with pytest.raises(MetaInputError, match="clean_every"):
        MetaReweightedLoss(BCELoss(), LR, clean_every=0)
    with pytest.raises(ConfigError, match="clean_every"):
        MetaReweightedLoss(BCELoss(), LR, backend="higher", clean_every=2)
