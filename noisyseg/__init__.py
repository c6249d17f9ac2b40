"""noisyseg: skin-lesion segmentation from noisy annotations.

Public API (stable): :func:`pixel_weights` and :class:`MetaReweightedLoss` (meta-learned per-pixel
loss weights), :func:`score` (ISIC-compatible metrics), ``noisyseg.train.train`` (one configured run), the
losses in :mod:`noisyseg.losses`, and the registries ``MODELS``, ``LOSSES``, ``DATASETS``,
``METHODS``, ``META_BACKENDS``.
"""
from noisyseg.data.sources import DATASETS
from noisyseg.errors import ConfigError, DataError, NoisysegError
from noisyseg.losses import LOSSES, build_loss
from noisyseg.meta import META_BACKENDS, MetaReweightedLoss, MetaResult, pixel_weights
from noisyseg.methods import METHODS
from noisyseg.metrics import score
from noisyseg.models import MODELS, UNet, build_model
from noisyseg import rivals  # noqa: F401  (registers the rival methods adele, mtcl, coteach)

__version__ = "0.1.0"

__all__ = [
    "ConfigError", "DATASETS", "DataError", "LOSSES", "METHODS", "META_BACKENDS", "MODELS", "MetaResult",
    "MetaReweightedLoss", "NoisysegError", "UNet", "build_loss", "build_model", "pixel_weights", "score",
]
