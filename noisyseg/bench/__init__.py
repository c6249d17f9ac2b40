"""Micro-benchmarks, timings never asserted: ``python -m noisyseg.bench meta`` (:mod:`noisyseg.bench.meta`: a
training step of every meta backend against the plain step, time and peak memory) and ``python -m noisyseg.bench
mc`` (:mod:`noisyseg.bench.mc`: MC-dropout scoring, naive vs loop vs batched); ``--help`` on each.
"""
from noisyseg.bench.cli import main
from noisyseg.bench.mc import mc_main
from noisyseg.bench.meta import _parse, meta_main  # noqa: F401  (_parse: the method-name grammar, tested on its own)

__all__ = ["main", "mc_main", "meta_main"]
