"""The field's methods against noisy segmentation labels, as rivals of meta reweighting in the same
benchmark: ADELE (label correction), MTCL (mean teacher + confident learning), co-teaching / JoCoR.

Importing this package registers ``adele``, ``mtcl`` and ``coteach`` in ``METHODS``; ``noisyseg``
imports it, so they are there whenever a method is built.
"""
from noisyseg.rivals.adele import ADELE
from noisyseg.rivals.coteaching import CoTeaching
from noisyseg.rivals.mtcl import MTCL
from noisyseg.rivals.streams import TwoStreamMethod

__all__ = ["ADELE", "CoTeaching", "MTCL", "TwoStreamMethod"]
