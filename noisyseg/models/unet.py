"""U-Net (Ronneberger et al., 2015) with configurable depth, width, normalisation and dropout.

Dropout sits at one configurable point. The network is split there into a deterministic
:meth:`UNet.prefix` and a stochastic :meth:`UNet.suffix`, so Monte-Carlo dropout can run the prefix
once and only the suffix T times (CEAL, Górriz et al. 2017, puts dropout after the bottleneck).
"""
from __future__ import annotations

import torch
from torch import nn

from noisyseg.errors import ConfigError
from noisyseg.models.registry import MODELS

NORMS = ("batch", "group", "none")
DROPOUT_POSITIONS = ("bottleneck", "decoder", "head")
INITS = ("default", "he")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


class ConvBlock(nn.Sequential):
    """Two 3x3 convolutions, each followed by normalisation and ReLU."""

    def __init__(self, c_in: int, c_out: int, norm: str) -> None:
        bias = norm == "none"  # a conv bias is redundant in front of a normalisation layer
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias), _norm(norm, c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=bias), _norm(norm, c_out), nn.ReLU(inplace=True),
        )


class UpBlock(nn.Module):
    """Transposed-conv upsampling, concatenation with the skip connection, then a ConvBlock."""

    def __init__(self, c_in: int, c_out: int, norm: str) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_out, 2, stride=2)
        self.conv = ConvBlock(2 * c_out, c_out, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


def _he_init(net: nn.Module) -> None:
    """Ronneberger et al.'s initialisation: N(0, 2 / N), N = inputs feeding one output unit. For the 2x2,
    stride-2 transposed convolutions each output pixel sees one tap per input channel, so N = c_in
    (``kaiming_normal_`` would count the kernel's four taps)."""
    for module in net.modules():
        if isinstance(module, nn.ConvTranspose2d):
            nn.init.normal_(module.weight, std=(2.0 / module.in_channels) ** 0.5)
        elif isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        else:
            continue
        if module.bias is not None:
            nn.init.zeros_(module.bias)


@MODELS.register("unet")
class UNet(nn.Module):
    """U-Net mapping ``[B, in_channels, H, W]`` images to ``[B, 1, H, W]`` logits.

    Args:
        in_channels: image channels.
        depth: number of 2x downsamplings; H and W must be divisible by ``2**depth``.
        base_width: channels of the first level; doubled at every level.
        norm: ``"batch"``, ``"group"`` or ``"none"``.
        dropout: dropout probability; 0 disables dropout.
        dropout_position: ``"bottleneck"`` (after the bottleneck, as CEAL), ``"decoder"`` (before
            the last decoder block) or ``"head"`` (before the 1x1 output convolution).
        init: ``"default"`` (PyTorch's) or ``"he"``: the U-Net paper's Gaussian with std sqrt(2 / N), N
            the inputs of one output unit, and zero biases. Without normalisation layers the default
            initialisation shrinks the signal at every layer, and SGD at the U-Net paper's small
            learning rates sits at the all-background plateau for thousands of steps.
    """

    def __init__(
        self,
        in_channels: int = 3,
        depth: int = 3,
        base_width: int = 16,
        norm: str = "batch",
        dropout: float = 0.0,
        dropout_position: str = "bottleneck",
        init: str = "default",
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ConfigError(f"model.norm={norm!r} is not one of {NORMS}")
        if dropout_position not in DROPOUT_POSITIONS:
            raise ConfigError(f"model.dropout_position={dropout_position!r} is not one of {DROPOUT_POSITIONS}")
        if init not in INITS:
            raise ConfigError(f"model.init={init!r} is not one of {INITS}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model.dropout={dropout} must be in [0, 1)")
        if depth < 1 or base_width < 1:
            raise ConfigError(f"model.depth={depth} and model.base_width={base_width} must be >= 1")
        self.in_channels, self.depth = in_channels, depth
        self.dropout_position = dropout_position
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.downs = nn.ModuleList(
            ConvBlock(c_in, c_out, norm) for c_in, c_out in zip([in_channels] + widths[:-2], widths[:-1])
        )
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = ConvBlock(widths[-2], widths[-1], norm)
        self.ups = nn.ModuleList(UpBlock(widths[i + 1], widths[i], norm) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], 1, 1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if init == "he":
            _he_init(self)

    def prefix(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], int]:
        """Deterministic part up to the dropout point: ``(activation, skips, next_up_index)``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet expects [B, {self.in_channels}, H, W] input, got {list(x.shape)}")
        if x.shape[-1] % 2**self.depth or x.shape[-2] % 2**self.depth:
            raise ValueError(f"UNet of depth {self.depth} needs H and W divisible by {2**self.depth}, got {list(x.shape[-2:])}")
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        stop = {"bottleneck": 0, "decoder": self.depth - 1, "head": self.depth}[self.dropout_position]
        for i in range(stop):
            x = self.ups[i](x, skips[-1 - i])
        return x, skips, stop

    def suffix(self, state: tuple[torch.Tensor, list[torch.Tensor], int]) -> torch.Tensor:
        """Dropout and everything after it; stochastic when dropout is active."""
        x, skips, start = state
        x = self.dropout(x)
        for i in range(start, self.depth):
            x = self.ups[i](x, skips[-1 - i])
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.suffix(self.prefix(x))
