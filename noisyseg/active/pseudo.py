"""Pseudo-label policies (``active/pseudo=``): which confident unlabeled images the model labels itself.

A policy sees the round number and the pool's confidence scores (an uncertainty: lower is more
confident) and returns the ids to pseudo-label this round. Pseudo-labels are recomputed every round
from the current model, and pseudo-labeled images stay in the unlabeled pool (the oracle may still
be asked about them later), as in CEAL (Górriz et al. 2017) and its classification ancestor (Wang
et al., "Cost-Effective Active Learning for Deep Image Classification", 2016).

Adding a policy is one class registered here plus ``conf/active/pseudo/<name>.yaml``.
"""
from __future__ import annotations

from typing import ClassVar, Sequence

import numpy as np

from noisyseg.active.samplers import most_confident
from noisyseg.errors import ConfigError
from noisyseg.registry import Registry

PSEUDO_POLICIES: Registry[type["PseudoPolicy"]] = Registry("pseudo-label policy")


class PseudoPolicy:
    """Base class: :meth:`choose` returns the ids to pseudo-label in ``round_`` (1-based query rounds)."""

    needs_confidence: ClassVar[bool] = True  # False: the loop skips the confidence scores

    def choose(self, round_: int, confidence: np.ndarray, ids: Sequence) -> list:
        raise NotImplementedError


@PSEUDO_POLICIES.register("none")
class NoPseudoLabels(PseudoPolicy):
    """Only oracle labels are trained on."""

    needs_confidence = False

    def choose(self, round_: int, confidence: np.ndarray, ids: Sequence) -> list:
        return []


@PSEUDO_POLICIES.register("ceal")
class ScheduledCount(PseudoPolicy):
    """CEAL's schedule: from ``start_round`` on, the ``step * (round - start_round + 1)`` most confident images.

    CEAL's code starts at round 5 with 20 images and adds 20 per round.
    """

    def __init__(self, start_round: int = 5, step: int = 20) -> None:
        if start_round < 1 or step < 0:
            raise ConfigError(f"active.pseudo needs start_round >= 1 and step >= 0; got {start_round=}, {step=}")
        self.start_round, self.step = start_round, step

    def count(self, round_: int) -> int:
        return max(0, round_ - self.start_round + 1) * self.step

    def choose(self, round_: int, confidence: np.ndarray, ids: Sequence) -> list:
        return most_confident(confidence, ids, self.count(round_))


@PSEUDO_POLICIES.register("threshold")
class ConfidenceThreshold(PseudoPolicy):
    """Every image whose uncertainty is at most ``threshold * decay ** (round - 1)``, at most ``max_count``.

    With ``decay < 1`` the bar tightens as the labeled set grows (Wang et al. 2016 lower it linearly);
    the confidence is the image's mean predictive entropy in bits, so ``threshold`` lies in [0, 1].
    """

    def __init__(self, threshold: float = 0.05, decay: float = 0.9, max_count: int | None = None) -> None:
        if not (0 <= threshold <= 1 and 0 < decay <= 1) or (max_count is not None and max_count < 0):
            raise ConfigError(f"active.pseudo needs 0 <= threshold <= 1, 0 < decay <= 1, max_count >= 0; "
                              f"got {threshold=}, {decay=}, {max_count=}")
        self.threshold, self.decay, self.max_count = threshold, decay, max_count

    def bar(self, round_: int) -> float:
        return self.threshold * self.decay ** (round_ - 1)

    def choose(self, round_: int, confidence: np.ndarray, ids: Sequence) -> list:
        confidence = np.asarray(confidence, np.float64)
        below = int(np.sum(confidence <= self.bar(round_)))  # NaN compares False: never chosen
        return most_confident(confidence, ids, below if self.max_count is None else min(below, self.max_count))


def build_pseudo_policy(name: str, **kwargs) -> PseudoPolicy:
    """Build a registered pseudo-label policy by name (a ``conf/active/pseudo`` file minus ``name``)."""
    return PSEUDO_POLICIES.build(name, **kwargs)
