"""The active-learning bookkeeping: which pool images the oracle labeled (and in which round), which are
pseudo-labeled this round, the per-round and per-epoch records, and the files a run resumes from.

:meth:`ActiveState.save` writes ``state.pt`` atomically (this state plus the model, optimiser, schedule,
method and config the loop passes in: the source of truth for resuming), a readable ``state.json``, and
``rounds.csv`` / ``metrics.csv``. What the oracle was asked is recorded separately, at once, by
:class:`~noisyseg.active.oracle.OracleLog`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from noisyseg.active.pool import Pool
from noisyseg.atomic import write_csv, write_json
from noisyseg.checkpoint import save_checkpoint

STATE_FORMAT = 1


@dataclass
class ActiveState:
    """Labels and records of one active-learning run; ``counters`` is shared with the trainers it feeds."""

    labeled: dict[str, int] = field(default_factory=dict)  # id -> round in which the oracle labeled it
    pseudo: list[str] = field(default_factory=list)        # ids pseudo-labeled this round
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per round
    epochs: list[dict[str, Any]] = field(default_factory=list)   # one row per training epoch
    epoch: int = 0
    counters: dict[str, int] = field(default_factory=lambda: {"steps": 0, "skipped": 0})

    def unlabeled(self, pool: Pool) -> list[str]:
        return [i for i in pool.ids if i not in self.labeled]

    def splits(self, pool: Pool, pseudo_masks: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
        """The round's training splits: ``clean`` the oracle-labeled images (in pool order, with the
        oracle's answers) and, when there are pseudo-labels, ``noisy`` the pseudo-labeled ones."""
        labeled = sorted(self.labeled, key=pool.index.get)
        splits = {"clean": pool.split(labeled, pool.answers[pool.rows(labeled)])}  # the learner sees the oracle's answer
        if self.pseudo:
            splits["noisy"] = pool.split(self.pseudo, pseudo_masks)
        return splits

    def state_dict(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "round": len(self.history) - 1, "labeled": dict(self.labeled),
                "pseudo": list(self.pseudo), "history": self.history, "epochs": self.epochs, "epoch": self.epoch,
                "counters": dict(self.counters)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.labeled, self.pseudo = dict(state["labeled"]), list(state["pseudo"])
        self.history, self.epochs, self.epoch = state["history"], state["epochs"], state["epoch"]
        self.counters.update(state["counters"])  # the same dict: trainers hold it

    def save(self, run_dir: Path, training: dict[str, Any]) -> None:
        """``state.pt`` (this state and ``training``: model, optimizer, scheduler, method, config), then the
        readable copies; every file is written atomically."""
        save_checkpoint(run_dir / "state.pt", {**self.state_dict(), **training})
        write_json(run_dir / "state.json", {"round": len(self.history) - 1, "labeled": self.labeled,
                                            "pseudo": self.pseudo})
        write_csv(run_dir / "rounds.csv", self.history)
        write_csv(run_dir / "metrics.csv", self.epochs)
