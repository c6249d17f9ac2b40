"""Deterministic, disjoint splits of labeled data: clean (expert), noisy, val, test, and pool.

``clean`` is the small expert-labeled set, ``noisy`` the rest of the training data (cheap labels),
``val``/``test`` are for model selection and reporting, and ``pool`` is held back unlabeled for
active learning. Sizes are counts (int) or fractions (float < 1) of the available training IDs.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from noisyseg.atomic import write_atomic
from noisyseg.errors import DataError

SPLITS = ("clean", "noisy", "val", "test", "pool")


def _count(value: int | float, available: int, option: str) -> int:
    if value < 0:
        raise DataError(f"data.split.{option}={value} must be >= 0")
    if isinstance(value, float) and value < 1:
        return int(round(value * available))
    if isinstance(value, float) and not value.is_integer():
        raise DataError(f"data.split.{option}={value}: use a fraction in [0, 1) or a whole count")
    return int(value)


def make_splits(ids: list[str], seed: int, clean: int | float, val: int | float, test: int | float,
                pool: int | float = 0, official: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """Split ``ids`` into :data:`SPLITS`. Official ``val``/``test`` ID lists, if given, are used as is.

    Fractions are taken of the IDs left for training (all IDs minus official val/test). The result
    depends only on ``ids`` (as a set), the sizes and ``seed``.
    """
    official = official or {}
    fixed = {name: list(official[name]) for name in ("val", "test") if official.get(name)}
    taken = {i for ids_ in fixed.values() for i in ids_}
    free = sorted(set(ids) - taken)  # sorted: independent of listing order
    order = [free[i] for i in np.random.default_rng(seed).permutation(len(free))]
    total = len(order)
    splits: dict[str, list[str]] = dict(fixed)
    for name, value in (("val", val), ("test", test), ("pool", pool), ("clean", clean)):
        if name in splits:
            continue
        n = _count(value, total, name)
        if n > len(order):
            raise DataError(
                f"data.split.{name}={value} asks for {n} images but only {len(order)} of {len(ids)} are left "
                f"after the splits before it (val, test, pool, clean in that order)"
            )
        splits[name], order = order[:n], order[n:]
    splits["noisy"] = order
    for name in ("val", "test"):
        if not splits[name]:
            raise DataError(f"data.split.{name}={val if name == 'val' else test}: the {name} split is empty")
    return {name: splits[name] for name in SPLITS}


def save_manifest(path: str | Path, splits: dict[str, list[str]]) -> None:
    """Write the split manifest (IDs per split) atomically as JSON."""
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(splits, indent=1)))


def load_manifest(path: str | Path, known_ids: list[str]) -> dict[str, list[str]]:
    """Read a manifest written by :func:`save_manifest` and check it against the data's IDs."""
    path = Path(path)
    try:
        splits = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: split manifest not found") from None
    except (OSError, ValueError) as err:  # a folder, unreadable bytes, invalid JSON
        raise DataError(f"{path}: not a valid split manifest ({err})") from None
    if not (isinstance(splits, dict) and set(splits) <= set(SPLITS) and all(
            isinstance(ids, list) and all(isinstance(i, str) for i in ids) for ids in splits.values())):
        raise DataError(f"{path}: a split manifest maps some of {SPLITS} to lists of ID strings")
    known, seen = set(known_ids), set()
    for name, ids in splits.items():
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise DataError(f"{path}: split {name!r} names IDs not in the data, e.g. {unknown[0]!r}")
        if seen & set(ids):
            raise DataError(f"{path}: split {name!r} overlaps another split, e.g. {sorted(seen & set(ids))[0]!r}")
        seen |= set(ids)
    return {name: list(splits.get(name, [])) for name in SPLITS}
