"""The model registry; models register themselves by name (``model.name`` in config)."""
from noisyseg.registry import Registry

MODELS: Registry = Registry("model")
