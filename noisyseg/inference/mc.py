"""Monte-Carlo dropout (Gal & Ghahramani, 2016) with a shared deterministic prefix.

Shape convention: MC predictions are sigmoid probabilities ``[T, B, H, W]`` — **samples first**,
then the batch, then the image; the model's single output channel is dropped. Every score of
:mod:`noisyseg.inference.uncertainty` and sampler of :mod:`noisyseg.active` takes this layout.

Only the dropout layers sample: :func:`mc_dropout` puts the model in eval mode (batch norm uses its
running statistics) and switches on the dropout modules alone, restoring every module's mode on exit.

Modes of :func:`mc_predict` (a model is "split" when it has ``prefix(x) -> state`` and
``suffix(state) -> logits`` with ``forward(x) == suffix(prefix(x))``, as :class:`~noisyseg.models.UNet`):

* ``"naive"``: T full forwards. Works for any ``nn.Module``.
* ``"loop"`` (default): the prefix once, the suffix T times. The prefix draws no random numbers, so
  the suffix sees the RNG stream exactly as the naive forwards do: same seed, same samples.
* ``"batched"``: the prefix state repeated T times along the batch (sample-major, row ``t * B + b``)
  and the suffix run once on ``T * B`` rows; can win on GPU. The masks are drawn in one call instead
  of T. The CPU generator fills a mask element by element, so the sample-major layout draws the very
  same masks as ``"naive"`` (equal up to float rounding of the larger convolutions); elsewhere (CUDA's
  Philox) only the distribution is the same.

``"loop"`` and ``"batched"`` fall back to ``"naive"`` for a model without ``prefix``/``suffix``.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, Iterator

import torch
from torch import nn

from noisyseg.errors import ConfigError

MODES = ("loop", "batched", "naive")


class NoDropoutError(ConfigError):
    """MC dropout was asked of a model without a dropout layer with ``p > 0``."""


def dropout_modules(model: nn.Module) -> list[nn.Module]:
    """The dropout layers of ``model`` that drop something (``p > 0``): Dropout, Dropout1d/2d/3d, AlphaDropout, ..."""
    return [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]


@contextlib.contextmanager
def _modes_restored(model: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training  # per module: .train(mode) would recurse into the children


@contextlib.contextmanager
def mc_dropout(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode with only the dropout layers on; every module's mode is restored on exit (also on errors).

    Raises:
        NoDropoutError: the model has no dropout layer with ``p > 0`` (MC samples would all be equal).
    """
    drops = dropout_modules(model)
    if not drops:
        raise NoDropoutError(
            f"{type(model).__name__} has no dropout layer with p > 0, so MC dropout would give T identical "
            "samples; build the model with dropout (e.g. model.dropout=0.5, as CEAL) or use the random sampler"
        )
    with _modes_restored(model):
        model.eval()
        for m in drops:
            m.train()
        yield model


def is_split(model: nn.Module) -> bool:
    """Whether ``model`` has the ``prefix``/``suffix`` split that the fast modes need."""
    return callable(getattr(model, "prefix", None)) and callable(getattr(model, "suffix", None))


def _probs(logits: torch.Tensor) -> torch.Tensor:
    """``[B, 1, H, W]`` (or ``[B, H, W]``) logits -> ``[B, H, W]`` probabilities."""
    if logits.ndim == 4 and logits.shape[1] == 1:
        logits = logits[:, 0]
    if logits.ndim != 3:
        raise ValueError(f"MC dropout expects [B, 1, H, W] binary-segmentation logits, got {list(logits.shape)}")
    return torch.sigmoid(logits.float())


class _RepeatedSeq(Sequence):
    """A list of prefix tensors (the U-Net's skips) repeated T times along the batch on first access,
    so a suffix that reads only some of them (dropout late in the decoder) copies only those."""

    def __init__(self, items: Sequence, times: int) -> None:
        self._items, self._times, self._cache = list(items), times, {}

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(len(self))[i]]
        i = range(len(self))[i]  # normalise negative indices; IndexError past the end
        if i not in self._cache:
            self._cache[i] = _repeat(self._items[i], self._times)
        return self._cache[i]


def _repeat(state: Any, times: int) -> Any:
    if isinstance(state, torch.Tensor):
        return state.repeat(times, *([1] * (state.ndim - 1)))  # [T * B, ...], row t * B + b
    if isinstance(state, tuple):
        return tuple(_repeat(s, times) for s in state)
    if isinstance(state, list):
        return _RepeatedSeq(state, times)
    if isinstance(state, dict):
        return {k: _repeat(v, times) for k, v in state.items()}
    return state


@contextlib.contextmanager
def _forbid_dropout(drops: list[nn.Module]) -> Iterator[None]:
    """The fast modes assume a deterministic prefix; fail loudly if a dropout layer runs inside it."""
    def hook(module: nn.Module, args: Any) -> None:
        raise ConfigError(
            f"{type(module).__name__} ran inside model.prefix(), so the prefix is not deterministic and "
            "the fast MC modes would be wrong; use mode='naive'"
        )

    handles = [m.register_forward_pre_hook(hook) for m in drops]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _mc_chunk(model: nn.Module, x: torch.Tensor, samples: int, mode: str, drops: list[nn.Module]) -> torch.Tensor:
    if mode == "naive":
        return torch.stack([_probs(model(x)) for _ in range(samples)])  # [T, B, H, W]
    with _forbid_dropout(drops):
        state = model.prefix(x)
    if mode == "loop":
        return torch.stack([_probs(model.suffix(state)) for _ in range(samples)])
    probs = _probs(model.suffix(_repeat(state, samples)))  # [T * B, H, W]
    return probs.reshape(samples, x.shape[0], *probs.shape[1:])


def mc_predict(
    model: nn.Module,
    images: torch.Tensor,
    samples: int,
    mode: str = "loop",
    chunk: int | None = None,
) -> torch.Tensor:
    """``samples`` MC-dropout predictions of ``images`` ``[B, C, H, W]`` as probabilities ``[T, B, H, W]``.

    Runs under :func:`mc_dropout` and ``torch.no_grad()``. ``chunk`` bounds memory: at most ``chunk``
    images go through the network at once (``chunk * samples`` rows in ``"batched"`` mode). The
    samples depend on the RNG stream, so a different ``chunk`` gives other (equally distributed)
    samples; with the same ``chunk`` and seed, ``"loop"`` equals ``"naive"`` exactly.

    Raises:
        NoDropoutError: the model has no active dropout layer.
        ConfigError: unknown ``mode``, ``samples < 1`` or ``chunk < 1``.
    """
    if mode not in MODES:
        raise ConfigError(f"MC dropout mode {mode!r} is not one of {MODES}")
    if samples < 1:
        raise ConfigError(f"MC dropout needs samples >= 1, got {samples}")
    if chunk is not None and chunk < 1:
        raise ConfigError(f"MC dropout chunk must be >= 1 or None, got {chunk}")
    if len(images) == 0:
        raise ValueError("mc_predict got an empty batch of images")
    if mode != "naive" and not is_split(model):
        mode = "naive"
    param = next(model.parameters(), None)
    if param is not None:
        images = images.to(param.device)
    step = chunk or len(images)
    with mc_dropout(model), torch.no_grad():
        drops = dropout_modules(model)
        parts = [_mc_chunk(model, images[i:i + step], samples, mode, drops) for i in range(0, len(images), step)]
    return torch.cat(parts, dim=1)


def predict(model: nn.Module, images: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Deterministic (dropout-free, eval-mode) probabilities ``[B, H, W]``; every module's mode is restored.

    The prediction CEAL's distance weighting and pseudo-labels are meant to use.
    """
    if len(images) == 0:
        raise ValueError("predict got an empty batch of images")
    param = next(model.parameters(), None)
    if param is not None:
        images = images.to(param.device)
    step = chunk or len(images)
    with _modes_restored(model), torch.no_grad():
        model.eval()
        return torch.cat([_probs(model(images[i:i + step])) for i in range(0, len(images), step)])
