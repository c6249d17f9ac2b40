"""Deprecated alias: moved to :mod:`noisyseg.inference.uncertainty` (``noisyseg.predict`` uses it too)."""
import warnings

from noisyseg.inference.uncertainty import *  # noqa: F401,F403

warnings.warn("noisyseg.active.scores moved to noisyseg.inference.uncertainty", DeprecationWarning, stacklevel=2)
