"""Collectives for the distributed meta step (``noisyseg.meta`` with ``process_group``).

N processes, each with a slice of the noisy and of the clean batch, give the weights one process
would give on the concatenated batches when (i) the clean gradient g is the *global* one and (ii)
``normalize="batch"`` divides by the global Σ w̃ (``"image"`` by the global image count). The
clean loss is a mean over the clean loss map, so the global g is the pixel-count-weighted mean of the
per-rank gradients: unequal per-rank batch sizes are handled, no equal-batch assumption.

What stays per rank (and so differs from one process on the concatenated batch): BatchNorm batch
statistics in train mode and dropout masks. Exact agreement needs a model without BatchNorm (e.g.
``norm="group"``) or in eval mode, and no dropout; SyncBatchNorm would give global statistics, but its
custom autograd function has no forward-mode rule, so the ``jvp`` backend cannot run through it.
"""
from __future__ import annotations

import atexit
import logging
import os
import sys
from contextlib import contextmanager
from typing import Any, Iterator, Optional, Union

import torch
import torch.distributed as dist
from torch import Tensor, nn

from noisyseg.device import resolve_device
from noisyseg.errors import ConfigError

LOCAL = "local"  # process_group value that turns the distributed meta step off
GroupArg = Union[None, str, Any]  # None (auto), "local", or a torch.distributed ProcessGroup


def _running() -> bool:
    """Whether this process is part of an initialised ``torch.distributed`` job."""
    return dist.is_available() and dist.is_initialized()


def resolve_group(process_group: GroupArg = None) -> Optional[Any]:
    """The group the meta step reduces over, or None for a local (single-process) step.

    ``None`` (auto): the default group when ``torch.distributed`` is initialised with world size > 1;
    ``"local"``: no reduction (per-rank weights); a ``ProcessGroup``: that group, whatever its size.
    """
    if isinstance(process_group, str):
        if process_group != LOCAL:
            raise ConfigError(f"process_group={process_group!r}: pass None (auto), {LOCAL!r} or a ProcessGroup")
        return None
    if process_group is not None:
        return process_group
    if _running() and dist.get_world_size() > 1:
        return dist.group.WORLD
    return None


def world_size(group: Any) -> int:
    return dist.get_world_size(group)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel``: meta passes call it functionally, bypassing DDP's hooks."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_reduce_sum(t: Tensor, group: Any) -> Tensor:
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


def average_gradients(grads: list[Optional[Tensor]], count: int, group: Any) -> list[Optional[Tensor]]:
    """Count-weighted mean over ranks, Σ_r n_r g_r / Σ_r n_r, in one all-reduce.

    ``count`` is this rank's n_r (pixels in its clean loss map). None entries (parameters the loss does
    not reach) must be None on every rank, which holds for the same model on every rank. The count
    travels in the gradients' dtype: exact in float64, and in float32 up to 2**24 pixels in all.
    """
    present = [t for t in grads if t is not None]
    if not present:
        return grads
    flat = torch.cat([t.reshape(-1) * count for t in present] + [present[0].new_full((1,), count)])
    all_reduce_sum(flat, group)
    flat = flat[:-1] / flat[-1]
    out, offset = [], 0
    for t in grads:
        if t is None:
            out.append(None)
            continue
        out.append(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()
    return out


# -- data-parallel training under torchrun --------------------------------------------------------

def setup(device: str) -> tuple[int, int, torch.device]:
    """``(rank, world size, device)``; under ``torchrun`` (``WORLD_SIZE > 1``) joins the default process
    group once: NCCL with one GPU per process (``LOCAL_RANK``) when CUDA is used, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, resolve_device(device)
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    local = int(os.environ.get("LOCAL_RANK", "0"))
    target = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(target)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
        # left to the interpreter's exit, the backend's threads can be torn down while still joinable
        # ("terminate called without an active exception", SIGABRT after a finished run): close it first
        atexit.register(_close_process_group)
    return dist.get_rank(), dist.get_world_size(), target


def _close_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def exit_worker() -> None:
    """End a ``torchrun`` worker whose work is done: close the process group, flush, and exit with status 0
    without the interpreter's teardown. A no-op in a single process.

    Why: on CPU (gloo), 1 ``torchrun`` run of 25 aborted in that teardown, after every result was written
    ("terminate called without an active exception", SIGABRT; Python's fault handler showed no Python
    frame left, so a C++ destructor at exit found a thread still running), and torchrun then reports the
    job as failed. Every file is written and closed before this is called; skipping the teardown skips
    nothing of ours."""
    if not _running():
        return
    _close_process_group()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def unused_parameters(net: nn.Module, in_channels: int, size: int) -> list[str]:
    """Names of the trainable parameters that one forward pass leaves without a gradient (smp's encoders
    keep the stages below ``encoder_depth``, for one). Runs in eval mode, so no statistics move, and
    restores every module's mode."""
    named = [(name, p) for name, p in net.named_parameters() if p.requires_grad]
    if not named:
        return []
    x = torch.zeros(1, in_channels, size, size, device=named[0][1].device, dtype=named[0][1].dtype)
    modes = [(m, m.training) for m in net.modules()]
    try:
        net.eval()
        with torch.enable_grad():
            grads = torch.autograd.grad(net(x).sum(), [p for _, p in named], allow_unused=True)
    finally:
        for m, training in modes:
            m.training = training
    return [name for (name, _), g in zip(named, grads) if g is None]


def data_parallel(net: nn.Module, device: torch.device, world: int, in_channels: int = 3, size: int = 64) -> nn.Module:
    """``net`` wrapped in ``DistributedDataParallel`` when ``world > 1`` (one GPU per process on CUDA), else
    ``net``. A network with parameters its forward pass never uses (found on one ``[1, in_channels, size,
    size]`` input) makes DDP look for unused parameters every step, where it would otherwise wait for
    their gradients forever."""
    if world == 1:
        return net
    unused = unused_parameters(net, in_channels, size)
    if unused and dist.get_rank() == 0:
        print(f"note: {len(unused)} parameters get no gradient (e.g. {unused[0]}); DistributedDataParallel "
              "looks for unused parameters every step", flush=True)
    return nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None,
                                               find_unused_parameters=bool(unused))


def is_main() -> bool:
    """True in a single process and on rank 0: the process that writes files."""
    return not _running() or dist.get_rank() == 0


def barrier() -> None:
    if _running():
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Run the block on rank 0 before the other ranks (e.g. to fill a cache they then read); a plain block
    in a single process."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (a no-op in a single process)."""
    if not _running():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in a single process)."""
    if not _running():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Per-key mean over the ranks that logged the key (epoch logs; one small gather per epoch)."""
    if not _running():
        return values
    gathered: list[dict[str, float]] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, values)
    keys = dict.fromkeys(k for d in gathered for k in d)
    return {k: sum(d[k] for d in gathered if k in d) / sum(k in d for d in gathered) for k in keys}
