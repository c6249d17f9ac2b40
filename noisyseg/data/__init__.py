"""Data: sources (synthetic, ISIC, PH2, folder), splits, cached arrays, transforms, datasets."""
from noisyseg.data.sources import DATASETS, Source, build_source
from noisyseg.data.splits import SPLITS, make_splits

__all__ = ["DATASETS", "SPLITS", "Source", "build_source", "make_splits"]
