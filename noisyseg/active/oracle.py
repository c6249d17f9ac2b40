"""The oracle (the human annotator) and the durable record of what it was asked.

:class:`SimulatedOracle` answers from the data's ground-truth masks, optionally corrupted by a
:mod:`noisyseg.noise` model (a hurried annotator). :class:`OracleLog` writes every answered query to
``oracle.json`` atomically *as soon as it is answered*, before any training on it, so a run killed
at any point never asks a real annotator about the same image twice.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from noisyseg.atomic import write_json
from noisyseg.errors import NoisysegError


class OracleError(NoisysegError):
    """The oracle was asked about an image it already labeled, or one it cannot label."""


class SimulatedOracle:
    """Answers queries with ``masks[id]`` (uint8 ``[H, W]``); refuses to label an image twice.

    ``answered`` (ids already labeled, e.g. restored from an :class:`OracleLog`) are never asked again.
    """

    def __init__(self, masks: dict[str, np.ndarray], answered: Sequence[str] = ()) -> None:
        self.masks = masks
        self.answered: set[str] = set(answered)
        self.queries = 0  # number of images labeled by this object (for tests and logs)

    def label(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        again = [i for i in ids if i in self.answered]
        unknown = [i for i in ids if i not in self.masks]
        if again or unknown:
            raise OracleError(f"the oracle was asked again about {again[:3]} or about unknown images {unknown[:3]}")
        self.answered.update(ids)
        self.queries += len(ids)
        return {i: self.masks[i] for i in ids}


class OracleLog:
    """``oracle.json``: ``[{"round": r, "ids": [...]}, ...]``, one entry per round, rewritten atomically."""

    def __init__(self, path: str | Path, write: bool = True) -> None:
        self.path, self.write = Path(path), write  # write=False: other ranks of a torchrun job keep a copy in memory
        try:
            self.entries: list[dict] = json.loads(self.path.read_text()) if self.path.exists() else []
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise OracleError(f"{self.path}: not a valid oracle log ({err}); it records which images a person "
                              f"labeled, so it is never overwritten: repair or move it") from None

    def ids(self, round_: int) -> list[str] | None:
        """The ids labeled in ``round_``, or None if the oracle has not been asked in that round."""
        for entry in self.entries:
            if entry["round"] == round_:
                return list(entry["ids"])
        return None

    def all_ids(self) -> list[str]:
        return [i for entry in self.entries for i in entry["ids"]]

    def record(self, round_: int, ids: Sequence[str]) -> None:
        if self.ids(round_) is not None:
            raise OracleError(f"{self.path}: round {round_} was already answered")
        self.entries.append({"round": round_, "ids": list(ids)})
        if self.write:
            write_json(self.path, self.entries)
