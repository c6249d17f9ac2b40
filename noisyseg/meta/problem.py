"""One meta step's inputs and the passes every backend shares: dropout seeds, cloned buffers, the
per-pixel loss map under given parameters, and the clean gradient g (all-reduced when distributed)."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
from torch import Tensor, nn
from torch.func import functional_call

from noisyseg.distributed import average_gradients
from noisyseg.errors import NoisysegError

Batch = tuple[Tensor, Tensor]  # (images [B, C, H, W], masks [B, 1, H, W])
LossFn = Callable[[Tensor, Tensor], Tensor]  # (logits, masks) -> per-pixel losses [B, ...]


class MetaInputError(NoisysegError, ValueError):
    """The batches, options or per-pixel loss map do not fit the meta step."""


@dataclass
class _Problem:
    model: nn.Module
    loss_fn: LossFn
    noisy: Batch
    clean: Batch
    lr: float
    seeds: tuple[int, int]  # (noisy, clean)
    need_loss: bool  # a fused backend may return the noisy loss map with its graph
    group: Optional[object] = None  # process group of a distributed step, None when local
    params: Optional[tuple[str, ...]] = None  # names/prefixes the virtual step moves; None: all (exact)
    clean_gradient: Optional[dict[str, Optional[Tensor]]] = None  # g by parameter name: given (reused) or set
    noisy_logits: Optional[Tensor] = None  # the last noisy forward's logits (weightings and bootstrap read them)


@dataclass
class _MetaGrad:
    u: Tensor  # meta gradient ∂L_c/∂ε, shape of the loss map, detached
    losses: Optional[Tensor] = None  # noisy loss map with graph to the real parameters (fused only)
    buffers: Optional[dict[str, Tensor]] = None  # buffers after that forward, committed on success


def _draw_seeds() -> tuple[int, int]:
    """(noisy, clean) dropout seeds: the only draw from the global generator in a meta step."""
    return tuple(torch.randint(0, 2**62, (2,)).tolist())


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run with the CPU (and ``device``'s) generator seeded; the global RNG state is restored after."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.random.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


def _trainable(model: nn.Module) -> dict[str, Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _stepped(p: _Problem, params: dict[str, Tensor]) -> dict[str, Tensor]:
    """The parameters the virtual step moves: all, or those named by ``p.params`` (a name or a prefix of
    dotted names, e.g. ``"head"``). Fewer parameters make the meta step cheaper and approximate."""
    if p.params is None:
        return params
    chosen = {n: w for n, w in params.items() if any(n == q or n.startswith(q + ".") for q in p.params)}
    if not chosen:
        raise MetaInputError(f"meta params {list(p.params)} match no trainable parameter; "
                             f"names look like {list(params)[-3:]}")
    return chosen


def _buffers(model: nn.Module) -> dict[str, Tensor]:
    return {n: b.clone() for n, b in model.named_buffers()}


def _loss_map(p: _Problem, params: dict[str, Tensor], batch: Batch, seed: int,
              buffers: Optional[dict[str, Tensor]] = None) -> Tensor:
    """Per-pixel losses of ``batch`` under ``params`` on cloned (or the given) buffers."""
    images, masks = batch
    with _seeded(seed, images.device):
        logits = functional_call(p.model, {**params, **(buffers or _buffers(p.model))}, (images,))
    if batch is p.noisy:
        p.noisy_logits = logits
    return _check_map(p.loss_fn(logits, masks), images.shape[0])


def _check_map(losses: Tensor, batch_size: int) -> Tensor:
    if not isinstance(losses, Tensor) or losses.ndim == 0 or losses.shape[0] != batch_size:
        shape = list(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
        raise MetaInputError(
            f"loss_fn must return per-pixel losses with a leading batch dimension of {batch_size} "
            f"(e.g. [B, 1, H, W], reduction='none'), got {shape}")
    return losses


def _clean_gradient(p: _Problem, params: dict[str, Tensor]) -> dict[str, Optional[Tensor]]:
    """g = ∇L_c(θ) for the parameters the virtual step moves (None where L_c does not reach), on cloned
    buffers so the clean pass leaves BN statistics alone; all-reduced in a distributed step. A g given
    in ``p.clean_gradient`` (``clean_every > 1``) is reused; a computed one is kept there."""
    if p.clean_gradient is not None:
        return p.clean_gradient
    moved = _stepped(p, params)
    clean_map = _loss_map(p, params, p.clean, p.seeds[1])
    g = torch.autograd.grad(clean_map.mean(), list(moved.values()), allow_unused=True)
    if p.group is not None:  # the global clean gradient: pixel-count-weighted mean over ranks
        g = average_gradients(list(g), clean_map.numel(), p.group)
    p.clean_gradient = dict(zip(moved, g))
    return p.clean_gradient
