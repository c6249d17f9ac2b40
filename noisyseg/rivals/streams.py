"""The data contract shared by the rivals: separate ``noisy`` and ``clean`` streams.

Label correction and sample selection must never touch an expert mask, so every rival draws its
noisy and expert images from two streams and knows which is which without a per-image flag. The
share of expert images in a batch is ``clean_share``: 0.5 is the balanced half-clean batch; ``None``
("pooled") is the expert split's share of noisy + clean, i.e. the pooled baseline's expected
composition, drawn stratified (the build layer passes the stream sizes through :meth:`set_stream_sizes`).
"""
from __future__ import annotations

import torch

from noisyseg.errors import ConfigError
from noisyseg.losses import PixelLoss
from noisyseg.methods import Batch, Method


class TwoStreamMethod(Method):
    """Base of the rivals: ``noisy`` and ``clean`` streams, mixed in every batch at ``clean_share``."""

    streams = {"noisy": ("noisy",), "clean": ("clean",)}

    def __init__(self, loss: PixelLoss, clean_share: float | None = 0.5) -> None:
        if clean_share is not None and not 0 < clean_share < 1:
            raise ConfigError(f"method.clean_share={clean_share} must be null (pooled share) or in (0, 1)")
        super().__init__(loss)
        self.clean_share = clean_share
        self.sizes: dict[str, int] = {}

    def set_stream_sizes(self, sizes: dict[str, int]) -> None:
        """Images per stream; needed only for ``clean_share=None``."""
        self.sizes = dict(sizes)

    def share(self) -> float:
        if self.clean_share is not None:
            return self.clean_share
        if not self.sizes:
            raise ConfigError("method.clean_share=null (pooled share) needs the stream sizes; set a share in (0, 1)")
        return self.sizes["clean"] / max(1, self.sizes["clean"] + self.sizes["noisy"])

    def batch_sizes(self, batch_size: int) -> dict[str, int]:
        # at least one image per stream: a batch without expert images would leave its stream unused
        clean = min(max(1, round(batch_size * self.share())), max(1, batch_size - 1))
        return {"noisy": max(1, batch_size - clean), "clean": clean}


def joined(batches: dict[str, Batch], key: str) -> torch.Tensor:
    """``key`` of the noisy batch followed by the clean batch (the order every rival keeps)."""
    return torch.cat([batches["noisy"][key], batches["clean"][key]])


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under a DistributedDataParallel or torch.compile wrapper."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)
