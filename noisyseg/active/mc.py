"""Deprecated alias: moved to :mod:`noisyseg.inference.mc` (``noisyseg.predict`` uses it too)."""
import warnings

from noisyseg.inference.mc import *  # noqa: F401,F403

warnings.warn("noisyseg.active.mc moved to noisyseg.inference.mc", DeprecationWarning, stacklevel=2)
