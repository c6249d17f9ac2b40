"""Segmentation models, found by name in :data:`MODELS`."""
from torch import nn

from noisyseg.models.registry import MODELS
from noisyseg.models.unet import UNet


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model by name with its keyword arguments."""
    return MODELS.build(name, **kwargs)


__all__ = ["MODELS", "UNet", "build_model"]
