"""Segmentation models, found by name in :data:`MODELS`: the built-in ``unet``, ``smp`` (any
segmentation_models_pytorch architecture and encoder, optional dependency) and ``module`` (any
``nn.Module`` by import path)."""
from torch import nn

from noisyseg.models import module, smp  # noqa: F401  (register "module" and "smp"; smp imports lazily)
from noisyseg.models.module import check_contract
from noisyseg.models.registry import MODELS
from noisyseg.models.unet import UNet

PRETRAINED_OPTIONS = {"encoder_weights": None}  # options that load pretrained weights, and their "off" value


def build_model(name: str, pretrained: bool = True, **kwargs) -> nn.Module:
    """Build a registered model by name with its keyword arguments.

    ``pretrained=False`` skips pretrained weights (``encoder_weights`` of ``model=smp``): for a model whose
    weights a checkpoint provides next (``predict``, ``report``), so nothing is downloaded or read."""
    if not pretrained:
        kwargs = {**kwargs, **{k: v for k, v in PRETRAINED_OPTIONS.items() if k in kwargs}}
    return MODELS.build(name, **kwargs)


__all__ = ["MODELS", "UNet", "build_model", "check_contract"]
