"""The CUDA path: what only a GPU exercises (cuDNN batch norm in the tangent rules, CUDA RNG forks,
bf16 autocast on CUDA, ``device=cuda`` training). Skipped without CUDA; ``experiments/gpu/check.sh``
runs it on a GPU machine, CI has none."""
from __future__ import annotations

import copy

import pytest
import torch
from test_meta import batches as cpu_batches
from test_meta import LR, check_autocast_matches_forward_ad, tiny_unet, weights_and_rng
from test_train import config
from torch.utils._python_dispatch import TorchDispatchMode

from noisyseg.active import mc_predict
from noisyseg.losses import BCEDiceLoss
from noisyseg.meta import META_BACKENDS, MetaReweightedLoss, pixel_weights
from noisyseg.meta import backends as meta_backends
from noisyseg.train import train

if not torch.cuda.is_available():
    pytest.skip("needs CUDA: run experiments/gpu/check.sh on a GPU machine", allow_module_level=True)
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def no_tf32():
    """cuDNN convolutions default to TF32 (10-bit mantissa) on Ampere and newer: float32 checks need float32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def unet(dtype, **kwargs):
    return tiny_unet(dtype, device=CUDA, **kwargs)


def batches(dtype):
    return cpu_batches(dtype, device=CUDA)


class OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_backends_agree_float64_on_cuda(mode):
    model = unet(torch.float64)
    model.train(mode == "train")
    noisy, clean = batches(torch.float64)
    ref, _ = weights_and_rng("autograd", model, BCEDiceLoss(), noisy, clean)
    assert ref.sum() > 0
    for backend in META_BACKENDS.names():
        w, _ = weights_and_rng(backend, model, BCEDiceLoss(), noisy, clean)
        assert (w - ref).abs().max() <= 1e-10, backend


@pytest.mark.filterwarnings("error::RuntimeWarning")  # a forward_ad fallback would warn
@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_fused_step_runs_on_its_rules_and_matches_forward_ad_float32(norm):
    """float32 batch norm on CUDA is cuDNN's kernel: its tangent rule, the recorded plan's replay and
    the fused step's gradient and BN statistics against the separate forward_ad step."""
    meta_backends._WARNED.clear()
    model = unet(torch.float32, norm=norm)
    noisy, clean = batches(torch.float32)
    if norm == "batch" and torch.backends.cudnn.is_available():
        with OpLog() as log, torch.no_grad():
            model(noisy[0])
        assert torch.ops.aten.cudnn_batch_norm.default in log.ops
    m1, m2 = copy.deepcopy(model), copy.deepcopy(model)
    for _ in range(2):  # the first jvp call records the tangent plan, the second replays it
        torch.manual_seed(3)
        fused = MetaReweightedLoss(BCEDiceLoss(), LR)(m1, noisy, clean)
        torch.manual_seed(3)
        separate = MetaReweightedLoss(BCEDiceLoss(), LR, backend="jvp_ad")(m2, noisy, clean)
        assert (fused.weights - separate.weights).abs().max() <= 1e-5 * separate.weights.max()
        for m in (m1, m2):
            m.zero_grad()
        fused.loss.backward()
        separate.loss.backward()
        for (name, a), b in zip(m1.named_parameters(), m2.parameters()):
            assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-7), name
        for a, b in zip(m1.buffers(), m2.buffers()):
            assert torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-7)


def test_bf16_autocast_on_cuda_matches_forward_ad():
    check_autocast_matches_forward_ad("cuda")


def test_cuda_generator_is_forked_not_consumed():
    """Dropout runs in forked generators seeded from two draws of the CPU generator: the same seed gives
    the same weights, and the global CUDA generator is left where it was."""
    model = unet(torch.float32, dropout=0.5)
    noisy, clean = batches(torch.float32)
    got = []
    for _ in range(2):
        torch.manual_seed(4)
        before = torch.cuda.get_rng_state()
        got.append(pixel_weights(model, BCEDiceLoss(), noisy, clean, LR))
        assert torch.equal(before, torch.cuda.get_rng_state())
    assert torch.equal(*got)


@pytest.mark.parametrize("position", ["bottleneck", "head"])
def test_mc_loop_equals_naive_on_cuda(position):
    model = unet(torch.float32, position=position, dropout=0.5).eval()
    x = torch.randn(3, 3, 16, 16, device=CUDA)
    out = {}
    for mode in ("naive", "loop"):
        torch.manual_seed(123)
        out[mode] = mc_predict(model, x, samples=4, mode=mode)
    assert torch.equal(out["loop"], out["naive"]) and (out["loop"].std(dim=0) > 0).any()


@pytest.mark.parametrize("amp", [False, True])
def test_meta_training_on_cuda_end_to_end(tmp_path, amp):
    results = train(config("method=meta", "device=cuda", f"trainer.amp={str(amp).lower()}",
                           "meta.clean_batch_size=2"), tmp_path)
    assert results["config"]["device"] == "cuda"
    assert sum(results["method_state"]["counts"].values()) == 6
    assert all(v == v for v in results["test"].values())  # finite metrics, no NaN
