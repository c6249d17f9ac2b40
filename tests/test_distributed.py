"""Distributed meta step: 2 gloo processes on CPU, each with a slice of the noisy and clean batches
(unequal slices: 1 + 3 noisy, 2 + 1 clean images), against one process on the concatenated batches.

Tolerances: float64 weights within 1e-10 (absolute; the weights average 1/1024) and DDP-averaged
parameter gradients within rtol 1e-10; float32 weights within 1e-5 of the largest weight. The model
is a GroupNorm U-Net without dropout: per-rank BatchNorm statistics and dropout masks would differ
from the concatenated batch (see noisyseg/distributed.py).
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from noisyseg.distributed import average_gradients, resolve_group
from noisyseg.errors import ConfigError
from noisyseg.losses import BCEDiceLoss, BCELoss
from noisyseg.meta import MetaReweightedLoss, pixel_weights
from noisyseg.models import build_model

LR = 0.1
WORLD = 2
NOISY_SLICES = [slice(0, 1), slice(1, 4)]  # rank r's images of the concatenated batches
CLEAN_SLICES = [slice(0, 2), slice(2, 3)]


def tiny_unet(dtype=torch.float64):
    torch.manual_seed(0)
    return build_model("unet", depth=2, base_width=4, norm="group", dropout=0.0).to(dtype).train()


def batches(dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    def batch(n):
        return torch.randn(n, 3, 16, 16, generator=g, dtype=dtype), (torch.rand(n, 1, 16, 16, generator=g) > 0.5).to(dtype)
    return batch(4), batch(3)  # noisy, clean


def ignoring_rank0(noisy):
    """Rank 0's noisy masks all marked -1 (ignored): its local weights are all zero, the global ones not."""
    masks = noisy[1].clone()
    masks[NOISY_SLICES[0]] = -1
    return noisy[0], masks


def masked_bce(logits, masks):  # per-pixel BCE, zero (and zero gradient) where the mask is -1
    return F.binary_cross_entropy_with_logits(logits, masks.clamp(0, 1), reduction="none") * (masks >= 0)


def flat(logits, masks):  # zero gradient everywhere: every weight is zero on every rank
    return logits * 0 + masks


def with_nan(batch, image):
    masks = batch[1].clone()
    masks[image, 0, 0, 0] = float("nan")
    return batch[0], masks


def part(batch, s):
    return batch[0][s], batch[1][s]


def step(model, loss_fn, noisy, clean, **kwargs):
    """One MetaReweightedLoss step with backward; the loss, weights, status and parameter gradients."""
    model.zero_grad(set_to_none=True)
    result = MetaReweightedLoss(loss_fn, LR, **kwargs)(model, noisy, clean)
    if result.loss is not None:
        result.loss.backward()
    inner = getattr(model, "module", model)
    grads = {n: p.grad.clone() for n, p in inner.named_parameters() if p.grad is not None}
    loss = None if result.loss is None else result.loss.item()
    return {"loss": loss, "weights": result.weights, "status": result.status, "grads": grads}


def learned_steps(model, noisy, clean, nan_noisy):
    """Two steps of the learned weighting (meta_best's options): φ's meta gradient, the weights, the
    parameter gradients; then a step with NaN on rank 1 only, which must leave φ alone on every rank."""
    torch.manual_seed(10 + dist.get_rank() if dist.is_initialized() else 10)  # φ starts apart on the ranks
    meta = MetaReweightedLoss(BCELoss(), LR, weighting="mwn", normalize="mean", weight_net_lr=0.01)
    out = {}
    for k in range(2):
        model.zero_grad(set_to_none=True)
        result = meta(model, noisy, clean)
        result.loss.backward()
        out[k] = {"weights": result.weights, "loss": result.loss.item(),
                  "grads": {n: q.grad.clone() for n, q in getattr(model, "module", model).named_parameters()}}
    out["phi"] = [q.detach().clone() for q in meta.learned.net.parameters()]
    with pytest.warns(RuntimeWarning, match="non-finite"):
        out["nan_status"] = meta(model, nan_noisy, clean).status
    out["phi_after_nan"] = [q.detach().clone() for q in meta.learned.net.parameters()]
    return out


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        ns, cs = NOISY_SLICES[rank], CLEAN_SLICES[rank]
        noisy, clean = batches()
        mine, mine_clean = part(noisy, ns), part(clean, cs)
        model = tiny_unet()
        out = {"w64": {mode: pixel_weights(model, BCEDiceLoss(), mine, mine_clean, LR, normalize=mode)
                       for mode in ("batch", "image", "none")}}
        noisy32, clean32 = batches(torch.float32)
        out["w32"] = pixel_weights(tiny_unet(torch.float32), BCELoss(), part(noisy32, ns), part(clean32, cs), LR)
        out["local"] = pixel_weights(model, BCELoss(), mine, mine_clean, LR, process_group="local")

        ddp = DDP(model)
        out["ddp"] = step(ddp, BCEDiceLoss(), mine, mine_clean)
        out["partial"] = step(ddp, masked_bce, part(ignoring_rank0(noisy), ns), mine_clean)
        out["flat_skip"] = step(ddp, flat, mine, mine_clean)
        out["flat_uniform"] = step(ddp, flat, mine, mine_clean, zero_policy="uniform")
        with pytest.warns(RuntimeWarning, match="non-finite"):  # NaN on rank 1's noisy batch only
            out["nan"] = step(ddp, BCELoss(), part(with_nan(noisy, 3), ns), mine_clean)
        out["mwn"] = learned_steps(ddp, mine, mine_clean, part(with_nan(noisy, 3), ns))

        with pytest.raises(ConfigError, match="jvp"):  # auto mode is distributed here
            pixel_weights(model, BCELoss(), mine, mine_clean, LR, backend="higher")
        with pytest.raises(ConfigError, match="jvp"):
            MetaReweightedLoss(BCELoss(), LR, backend="autograd", process_group=dist.group.WORLD)
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Both ranks' results (one spawn for every test here: starting processes is the slow part)."""
    tmp = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def gather(ranks, *keys):
    def get(out):
        for k in keys:
            out = out[k]
        return out
    return torch.cat([get(out) for out in ranks])


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.mark.slow  # the ranks fixture spawns two processes
@pytest.mark.parametrize("mode", ["batch", "image", "none"])
def test_weights_match_single_process_float64(ranks, mode):
    noisy, clean = batches()
    ref = pixel_weights(tiny_unet(), BCEDiceLoss(), noisy, clean, LR, normalize=mode)
    got = gather(ranks, "w64", mode)
    assert ref.sum() > 0 and got.shape == ref.shape
    assert (got - ref).abs().max().item() <= 1e-10  # measured ~1e-19


@pytest.mark.slow  # the ranks fixture spawns two processes
def test_weights_match_single_process_float32(ranks):
    noisy, clean = batches(torch.float32)
    ref = pixel_weights(tiny_unet(torch.float32), BCELoss(), noisy, clean, LR)
    assert (gather(ranks, "w32") - ref).abs().max().item() <= 1e-5 * ref.max().item()


@pytest.mark.slow  # the ranks fixture spawns two processes
def test_local_opt_out_gives_per_rank_weights(ranks):
    noisy, clean = batches()
    for rank, out in enumerate(ranks):
        mine = part(noisy, NOISY_SLICES[rank]), part(clean, CLEAN_SLICES[rank])
        ref = pixel_weights(tiny_unet(), BCELoss(), *mine, LR)
        assert torch.allclose(out["local"], ref, rtol=0, atol=1e-15)


@pytest.mark.slow  # the ranks fixture spawns two processes
@pytest.mark.parametrize("case", ["ddp", "partial"])
def test_ddp_gradient_matches_single_process(ranks, case):
    """DDP averages the world-size-scaled per-rank losses into the single-process gradient of Σ w ℓ.
    In "partial", rank 0's local weights are all zero, yet it must not skip (the global ones are not)."""
    noisy, clean = batches()
    loss_fn, noisy = (BCEDiceLoss(), noisy) if case == "ddp" else (masked_bce, ignoring_rank0(noisy))
    ref = step(tiny_unet(), loss_fn, noisy, clean)
    assert ref["status"] == "ok" and all(out[case]["status"] == "ok" for out in ranks)
    assert (gather(ranks, case, "weights") - ref["weights"]).abs().max().item() <= 1e-10
    if case == "partial":
        assert not ranks[0][case]["weights"].any()
    assert sum(out[case]["loss"] for out in ranks) / WORLD == pytest.approx(ref["loss"], rel=1e-12)
    for name, g in ref["grads"].items():
        for out in ranks:  # DDP leaves the same averaged gradient on every rank
            assert torch.allclose(out[case]["grads"][name], g, rtol=1e-10, atol=1e-15), name


@pytest.mark.slow  # the ranks fixture spawns two processes
def test_zero_and_non_finite_decisions_are_global(ranks):
    noisy, clean = batches()
    assert all(out["flat_skip"]["status"] == "all_zero" and out["flat_skip"]["loss"] is None for out in ranks)
    # uniform fallback: the mean over all ranks' pixels, with 1 and 3 noisy images on the two ranks
    uniform = sum(out["flat_uniform"]["loss"] for out in ranks) / WORLD
    assert uniform == pytest.approx(noisy[1].mean().item(), rel=1e-12)
    assert all(out["nan"]["status"] == "non_finite" and out["nan"]["loss"] is None for out in ranks)
    assert not any(out["nan"]["weights"].any() for out in ranks)


@pytest.mark.slow  # the ranks fixture spawns two processes
def test_the_learned_weighting_steps_as_one_process_would(ranks):
    """weighting=mwn under DDP: φ copied from rank 0, its meta gradient summed over all ranks' pixels, so
    the weights, the loss and the parameter gradients of two steps are those of one process on the
    concatenated batches (the weighting net is float32: tolerances of float32 sums)."""
    noisy, clean = batches()
    model = tiny_unet()
    torch.manual_seed(10)  # rank 0's φ
    ref = learned_steps(model, noisy, clean, with_nan(noisy, 3))
    for k in range(2):
        got = gather(ranks, "mwn", k, "weights")
        assert (got - ref[k]["weights"]).abs().max().item() <= 1e-6 * ref[k]["weights"].max().item()
        assert sum(out["mwn"][k]["loss"] for out in ranks) / WORLD == pytest.approx(ref[k]["loss"], rel=1e-6)
        for name, g in ref[k]["grads"].items():
            for out in ranks:
                assert torch.allclose(out["mwn"][k]["grads"][name], g, rtol=1e-5, atol=1e-9), name
    for out in ranks:
        assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(out["mwn"]["phi"], ref["phi"]))
        assert out["mwn"]["nan_status"] == "non_finite"  # NaN on rank 1 only: no rank moves φ
        assert all(torch.equal(a, b) for a, b in zip(out["mwn"]["phi_after_nan"], out["mwn"]["phi"]))


def test_resolve_group_without_distributed():
    assert not dist.is_initialized()
    assert resolve_group(None) is None and resolve_group("local") is None
    with pytest.raises(ConfigError, match="local"):
        resolve_group("world")
    assert average_gradients([None, None], 3, group=None) == [None, None]  # nothing to reduce, no collective
