"""noisyseg.tangents: every rule against torch.autograd.forward_ad in float64, the recorded primal
graph, unsupported ops and patterns, and the plan that frees tangents after their last use."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn

from noisyseg.tangents import RULES, TangentUnsupported, forward_with_tangent, has_plan, unsupported_ops
from noisyseg.tangents.mode import _PLANS, _TangentMode

D = torch.float64


def reference(fn, inputs, tangents):
    """Tangent of ``fn(*inputs)`` by torch.autograd.forward_ad."""
    with fwAD.dual_level():
        duals = [fwAD.make_dual(x, t) if t is not None else x for x, t in zip(inputs, tangents)]
        return fwAD.unpack_dual(fn(*duals)).tangent


def check(fn, *shapes, tangent_of=None, positive=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(s, generator=g, dtype=D) for s in shapes]
    if positive:
        inputs = [x.abs() + 0.5 for x in inputs]
    which = range(len(inputs)) if tangent_of is None else tangent_of
    tangents = [torch.randn(x.shape, generator=g, dtype=D) if i in which else None for i, x in enumerate(inputs)]
    expected = reference(fn, [x.clone() for x in inputs], tangents)
    out, got = forward_with_tangent(lambda: fn(*inputs), {x: t for x, t in zip(inputs, tangents) if t is not None})
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-12), (got - expected).abs().max()
    return out


BN_TRAIN = lambda x, w, b: F.batch_norm(x, torch.zeros(3, dtype=D), torch.ones(3, dtype=D), w, b, training=True)
BN_EVAL = lambda x, w, b: F.batch_norm(x, torch.full((3,), 0.2, dtype=D), torch.full((3,), 1.5, dtype=D), w, b)
CASES = {
    "conv2d": (lambda x, w, b: F.conv2d(x, w, b, padding=1), [(2, 3, 6, 6), (4, 3, 3, 3), (4,)]),
    "conv_transpose": (lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2), [(2, 4, 3, 3), (4, 2, 2, 2), (2,)]),
    "batch_norm_train": (BN_TRAIN, [(4, 3, 5, 5), (3,), (3,)]),
    "batch_norm_eval": (BN_EVAL, [(4, 3, 5, 5), (3,), (3,)]),
    "batch_norm_legit": (lambda x, w, b: torch.ops.aten._native_batch_norm_legit(  # the rule CUDA's cuDNN BN shares
        x, w, b, torch.zeros(3, dtype=D), torch.ones(3, dtype=D), True, 0.1, 1e-5)[0], [(4, 3, 5, 5), (3,), (3,)]),
    "group_norm": (lambda x, w, b: F.group_norm(x, 2, w, b), [(2, 4, 5, 5), (4,), (4,)]),
    "relu": (lambda x: F.relu(x), [(3, 7)]),
    "relu_": (lambda x: F.relu(x * 1.0, inplace=True) + F.leaky_relu(x * 1.0, 0.1, inplace=True), [(3, 7)]),
    "leaky_relu": (lambda x: F.leaky_relu(x, 0.1), [(3, 7)]),
    "sigmoid_tanh": (lambda x: torch.sigmoid(x) * torch.tanh(x), [(3, 7)]),
    "gelu_silu": (lambda x: F.gelu(x) + F.silu(x) + F.gelu(x, approximate="tanh"), [(3, 7)]),
    "exp_reciprocal_pow": (lambda x: torch.exp(x) + 1 / x + x.pow(3) + x**0.5 + x.sqrt() + x.log(), [(3, 7)]),
    "abs_clamp": (lambda x: x.abs() + x.clamp(-0.5, 0.5) + x.clamp_min(0.1) + x.clamp_max(0.2), [(3, 7)]),
    "bce_with_logits": (lambda z, y: F.binary_cross_entropy_with_logits(z, y, reduction="none")
                        + F.binary_cross_entropy_with_logits(z, y) + F.binary_cross_entropy_with_logits(z, y, reduction="sum"),
                        [(2, 1, 4, 4), (2, 1, 4, 4)]),
    "max_avg_pool": (lambda x: F.max_pool2d(x, 2) + F.avg_pool2d(x, 2), [(2, 3, 6, 6)]),
    "upsample": (lambda x: F.interpolate(x, scale_factor=2) + F.interpolate(x, scale_factor=2, mode="bilinear"),
                 [(2, 3, 4, 4)]),
    "views": (lambda x: x.permute(0, 2, 1).reshape(2, -1)[:, 1:5].t().unsqueeze(0).squeeze(0).flatten()
              + x.transpose(1, 2)[0, 0, :1].expand(8), [(2, 5, 2)]),
    "cat_stack_where": (lambda a, b: torch.cat([a, b], 1).sum(1) + torch.stack([a, b]).mean(0).sum(1)
                        + torch.where(a > 0, a, b).sum(1), [(3, 4), (3, 4)]),
    "scalars_and_pad": (lambda x: F.pad(2 - (x + 1) * 3 / 4 - 5, (1, 1), value=7.0) - 1.0, [(3, 4)]),
    "products": (lambda a, b: a * b / (b.abs() + 1) + a @ b.t() @ a + torch.bmm(a[None], b.t()[None])[0].sum(),
                 [(4, 4), (4, 4)]),
    "linear": (lambda x, w, b: F.linear(x, w, b), [(3, 5), (2, 5), (2,)]),
    "split_pixel_shuffle": (lambda x: sum(t.sum() for t in x.split(2, 1)) + F.pixel_shuffle(x, 2).sum(), [(1, 4, 3, 3)]),
    "dice_like": (lambda z, y: (torch.sigmoid(z) + y - 2 * torch.sigmoid(z) * y)
                  * (16 / (torch.sigmoid(z).sum((1, 2, 3), keepdim=True) + y.sum((1, 2, 3), keepdim=True) + 1.0)),
                  [(2, 1, 4, 4), (2, 1, 4, 4)]),
    "in_place": (lambda a, b: (a * 1).add_(b, alpha=2).mul_(3).div_(2).sub_(b) + torch.zeros_like(a).copy_(b), [(3, 4), (3, 4)]),
    # the ops of segmentation_models_pytorch / timm encoders and decoders
    "conv_strided_grouped": (lambda x, w1, w2: F.conv2d(F.conv2d(x, w1, stride=2, padding=1, groups=4), w2, dilation=2),
                             [(2, 4, 9, 9), (4, 1, 3, 3), (2, 4, 2, 2)]),
    "in_place_products": (lambda a, b: (a * 1).mul_(a.sigmoid()) + (a * 1).mul_(b) + (b * 1).div_(a.abs() + 1)
                          + (a * 1).mul_(2.0), [(3, 4), (3, 4)]),
    "in_place_activations": (lambda x: F.silu(x * 1, inplace=True) + F.hardswish(x * 1, inplace=True)
                             + F.hardsigmoid(x * 1, inplace=True) + F.relu6(x * 1, inplace=True)
                             + F.hardtanh(x * 1, -0.5, 0.5, inplace=True) + F.elu(x * 1, inplace=True)
                             + F.mish(x * 1, inplace=True) + (x * 1).sigmoid_() + (x * 1).tanh_(), [(3, 7)]),
    "activations": (lambda x: F.hardswish(x * 2) + F.hardsigmoid(x * 2) + F.relu6(x * 4) + F.elu(x, 0.5) + F.mish(x)
                    + F.softplus(x, 2.0) + x.abs().add(0.1).rsqrt() + x.masked_fill(x > 0.5, 3.0), [(3, 7)]),
    "softmax": (lambda x: F.softmax(x, 1) + F.log_softmax(x, -1), [(2, 3, 5)]),
    "layer_norm": (lambda x, w, b: F.layer_norm(x, (4, 5), w, b) + F.layer_norm(x, (5,)), [(2, 3, 4, 5), (4, 5), (4, 5)]),
    "adaptive_pools": (lambda x: F.adaptive_avg_pool2d(x, 1).sum((2, 3)) + F.adaptive_avg_pool2d(x, (2, 3)).sum((2, 3))
                       + F.adaptive_max_pool2d(x, (3, 2)).sum((2, 3)), [(2, 3, 7, 6)]),
    "max_pool_strided": (lambda x: F.max_pool2d(x, 3, stride=2, padding=1) + F.avg_pool2d(x, 3, 2, 1, count_include_pad=False),
                         [(2, 3, 8, 8)]),
    "upsample_aligned": (lambda x: F.interpolate(x, size=(7, 9), mode="bilinear", align_corners=True)
                         + F.interpolate(x, size=(7, 9), mode="bicubic") + F.interpolate(x, size=(7, 9), mode="nearest-exact"),
                         [(2, 3, 4, 5)]),
    "shape_ops": (lambda x: x.repeat(1, 2, 1, 1).roll(1, 2).flip(3)[:, :3] + F.pixel_unshuffle(x, 2).sum()
                  + F.unfold(x, 2).sum() + F.pad(x, (1, 1, 1, 1), mode="reflect")[..., 1:-1, 1:-1], [(2, 3, 4, 4)]),
}


@pytest.mark.parametrize("name", CASES)
def test_rule_matches_forward_ad(name):
    fn, shapes = CASES[name]
    positive = name == "exp_reciprocal_pow"
    tangent_of = [0] if name in ("bce_with_logits", "dice_like") else None  # targets are constants
    check(fn, *shapes, tangent_of=tangent_of, positive=positive)



def test_batch_norm_rule_reads_cudnn_outputs():
    """cuDNN's batch norm returns a fourth output (a reserve buffer) after the saved mean and invstd; the
    rule reads those by position, so given cuDNN-shaped outputs it gives native's tangent."""
    g = torch.Generator().manual_seed(0)
    x, w, b, tx, tw, tb = (torch.randn(s, generator=g, dtype=D) for s in [(4, 3, 5, 5), (3,), (3,)] * 2)
    args = (x, w, b, torch.zeros(3, dtype=D), torch.ones(3, dtype=D), True, 0.1, 1e-5)
    out = torch.ops.aten.native_batch_norm(*args)
    T = {id(x): tx, id(w): tw, id(b): tb}.get
    rule = RULES[torch.ops.aten.cudnn_batch_norm.default]
    native = rule(torch.ops.aten.native_batch_norm.default, args, {}, out, lambda t: T(id(t)))[0]
    cudnn = rule(torch.ops.aten.cudnn_batch_norm.default, args, {}, (*out, torch.empty(0, dtype=torch.uint8)),
                 lambda t: T(id(t)))[0]
    assert torch.equal(native, cudnn)
    assert torch.allclose(native, reference(BN_TRAIN, [x, w, b], [tx, tw, tb]), rtol=1e-10, atol=1e-12)

def test_partial_tangents_and_dropout_mask():
    check(lambda x, w: F.conv2d(x, w), (2, 3, 5, 5), (2, 3, 3, 3), tangent_of=[1])
    check(BN_TRAIN, (4, 3, 5, 5), (3,), (3,), tangent_of=[1, 2])  # scale and shift only
    x, t = torch.randn(4, 6, dtype=D), torch.randn(4, 6, dtype=D)
    for drop in (lambda v: F.dropout(v, 0.5), lambda v: F.dropout2d(v[None, :, :, None], 0.5).flatten()):
        torch.manual_seed(3)
        expected = reference(drop, [x], [t])
        torch.manual_seed(3)
        _, got = forward_with_tangent(lambda: drop(x), {x: t})
        assert torch.allclose(got, expected, rtol=0, atol=1e-12)


def test_primal_graph_is_recorded_and_tangent_is_not():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.Conv2d(4, 1, 1)).double()
    x = torch.randn(2, 3, 8, 8, dtype=D)
    seeds = {p: torch.randn_like(p) for p in model.parameters()}
    out, tangent = forward_with_tangent(lambda: model(x), seeds)
    assert out.requires_grad and not tangent.requires_grad
    weights = torch.rand_like(out)
    got = torch.autograd.grad((out * weights).sum(), list(model.parameters()))
    expected = torch.autograd.grad((model(x) * weights).sum(), list(model.parameters()))
    assert all(torch.allclose(a, b) for a, b in zip(got, expected))


def test_unsupported_ops_and_patterns_raise():
    x, t = torch.randn(3, 4, dtype=D), torch.randn(3, 4, dtype=D)
    with pytest.raises(TangentUnsupported, match="no tangent rule"):
        forward_with_tangent(lambda: torch.sin(x), {x: t})
    with pytest.raises(TangentUnsupported, match="view"):
        forward_with_tangent(lambda: (x * 1)[:, :2].relu_(), {x: t})
    with pytest.raises(TangentUnsupported, match="view"):  # in place on a tensor a view was taken of
        forward_with_tangent(lambda: [y := x * 1, y[:, :1], y.relu_()][-1], {x: t})
    # every unsupported op is named, after the forward ran to its end
    with pytest.raises(TangentUnsupported, match=r"no tangent rule for aten.sin.default, aten.cos.default; .*view") as err:
        forward_with_tangent(lambda: (x * 1)[:, :2].relu_().sin().cos().sin(), {x: t})
    assert len(err.value.problems) == 3
    # no tangent input: any op is fine
    out, tangent = forward_with_tangent(lambda: torch.sin(x), {})
    assert torch.equal(out, torch.sin(x)) and not tangent.any()


def test_a_failing_rule_is_unsupported_not_a_crash(monkeypatch):
    """A rule that breaks (say, an overload with other outputs on another device or torch version) makes
    the caller fall back to forward_ad instead of crashing the training step."""
    def broken(func, args, kwargs, out, T):
        raise ValueError("too many values to unpack")

    monkeypatch.setitem(RULES, torch.ops.aten.mul.Tensor, broken)
    x, t = torch.randn(3, dtype=D), torch.randn(3, dtype=D)
    with pytest.raises(TangentUnsupported, match="rule of aten.mul.Tensor failed: ValueError"):
        forward_with_tangent(lambda: x * x, {x: t})


def live_tangents(model, x, seeds, plan):
    """The forward's output tangent and how many op-output tangents are still held at its end."""
    mode = _TangentMode(seeds, plan)
    with mode:
        out = model(x)
    return mode.tangent(out), len(list(mode.tangents.keys()))


def test_plan_frees_tangents_of_saved_activations_and_keeps_results():
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU()) for _ in range(4)]).double()
    x = torch.randn(2, 3, 8, 8, dtype=D)
    seeds = {p: torch.randn_like(p) for p in model.parameters()}
    key = ("test-plan", id(model))
    forward_with_tangent(lambda: model(x), seeds, plan_key=key)  # records the plan
    first, live_first = live_tangents(model, x, seeds, None)
    second, live_second = live_tangents(model, x, seeds, _PLANS[key])  # frees by it
    assert torch.allclose(first, second, rtol=0, atol=1e-12)
    assert live_first >= 8 and live_second <= 2  # only the output's (and its input's) tangent remain


def test_a_forward_that_differs_from_its_plan_is_still_exact():
    a0, b0 = torch.randn(5, dtype=D), torch.randn(5, dtype=D)
    ta, tb = torch.randn(5, dtype=D), torch.randn(5, dtype=D)
    key = "test-diverge"
    forward_with_tangent(lambda: (a0 * 2).exp() * b0, {a0: ta, b0: tb}, plan_key=key)
    # same first steps, then reads the first product again after its recorded last use
    with pytest.raises(TangentUnsupported, match="freed"):
        forward_with_tangent(lambda: [y := a0 * 2, z := y.exp() * b0, z + y][-1], {a0: ta, b0: tb}, plan_key=key)
    assert not has_plan(key)  # dropped: the next forward under this key is recorded afresh
    forward_with_tangent(lambda: (a0 * 2).exp() * b0, {a0: ta, b0: tb}, plan_key=key)
    # a different op sequence: the replay stops freeing, the result stays exact
    fn = lambda: (a0 * 2).exp() + (a0 * 2).sigmoid() * b0
    expected = reference(lambda a, b: (a * 2).exp() + (a * 2).sigmoid() * b, [a0, b0], [ta, tb])
    _, got = forward_with_tangent(fn, {a0: ta, b0: tb}, plan_key=key)
    assert torch.allclose(got, expected, rtol=1e-12)


class _SinCos(nn.Module):
    def forward(self, x):
        return torch.cos(torch.sin(x))  # neither has a tangent rule


def test_unsupported_ops_of_a_model_are_listed_without_side_effects():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Hardswish(inplace=True), nn.Conv2d(4, 1, 1))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 8, 8)
    assert unsupported_ops(model, x) == []
    assert unsupported_ops(nn.Sequential(model, _SinCos()), x) == ["no tangent rule for aten.sin.default",
                                                                   "no tangent rule for aten.cos.default"]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # BN statistics untouched
