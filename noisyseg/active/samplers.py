"""Active-learning samplers (``active.sampler=``), after baal's heuristics contract.

A sampler implements one method, ``score(probs, prediction=None) -> np.ndarray [B]``: an image score
from MC probabilities ``[T, B, H, W]`` (samples first, :mod:`noisyseg.inference.mc`); higher means more
informative. The base class does the rest:

* :meth:`Sampler.rank` — positions, most informative first; NaN scores last (with a warning); ties
  in pool order (a stable sort), so a ranking never depends on the sort algorithm.
* :meth:`Sampler.select` ``(scores_or_probs, ids, n, rng) -> list`` — the ``n`` chosen ids; with
  ``n`` larger than the pool it returns the whole pool (in ranked order), with an empty pool ``[]``.

:func:`score_pool` scores a whole pool in chunks (bounded memory; chunked = all at once) and
:func:`most_confident` ranks images for pseudo-labels. Adding a sampler is one class registered here
plus ``conf/active/sampler/<name>.yaml`` (its ``name`` and keyword arguments).
"""
from __future__ import annotations

import warnings
from typing import ClassVar, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from noisyseg.errors import ConfigError
from noisyseg.inference.mc import dropout_modules, mc_predict, predict
from noisyseg.inference.uncertainty import MIN_SAMPLES, REDUCTIONS, image_scores, pixel_uncertainty
from noisyseg.registry import Registry

SAMPLERS: Registry[type[Sampler]] = Registry("sampler")


def build_sampler(name: str, **kwargs) -> Sampler:
    """Build a registered sampler by name with its keyword arguments (a ``conf/active/sampler`` file minus ``name``)."""
    return SAMPLERS.build(name, **kwargs)


def _as_scores(values, n_ids: int) -> np.ndarray:
    scores = values.detach().cpu().double().numpy() if isinstance(values, torch.Tensor) else np.asarray(values, np.float64)
    if scores.shape != (n_ids,):
        raise ValueError(f"got {scores.shape} scores for {n_ids} ids")
    return scores


def _descending(scores: np.ndarray) -> np.ndarray:
    """Positions by decreasing score, NaN last, ties in pool order."""
    nan = np.isnan(scores)
    if nan.any():
        warnings.warn(f"{int(nan.sum())} of {len(scores)} uncertainty scores are NaN; they are ranked last", RuntimeWarning)
    return np.lexsort((np.arange(len(scores)), -np.where(nan, -np.inf, scores), nan))


class Sampler:
    """Base class: subclasses implement :meth:`score` (and :meth:`_choose` for a non-greedy query)."""

    needs_mc: ClassVar[bool] = True  # False: select() needs no predictions (random)
    min_samples: ClassVar[int] = 1  # MC samples the score needs (variance and BALD: 2)
    distance_weighted: bool = False  # True: score() uses the deterministic prediction if given

    def score(self, probs: torch.Tensor, prediction: torch.Tensor | None = None) -> np.ndarray:
        """Image scores ``[B]`` (float64, higher = more informative) of MC probabilities ``[T, B, H, W]``."""
        raise NotImplementedError

    def rank(self, scores: np.ndarray) -> np.ndarray:
        """Positions into ``scores``, most informative first; NaN last; ties in pool order."""
        return _descending(np.asarray(scores, np.float64))

    def _choose(self, scores: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.rank(scores)[:n]

    def select(
        self,
        scores_or_probs: np.ndarray | torch.Tensor | None,
        ids: Sequence,
        n: int,
        rng: np.random.Generator | int | None = None,
    ) -> list:
        """The ids to query: ``min(n, len(ids))`` of them, from image scores ``[len(ids)]`` or MC probabilities ``[T, len(ids), H, W]``.

        ``rng`` (a ``numpy.random.Generator``, advanced in place, or a seed) drives the random choices.
        """
        ids = list(ids)
        if n < 0:
            raise ConfigError(f"cannot select a negative number of images (n={n})")
        if isinstance(scores_or_probs, torch.Tensor) and scores_or_probs.ndim == 4:
            scores_or_probs = self.score(scores_or_probs)
        if scores_or_probs is None:
            if self.needs_mc:
                raise ConfigError(f"the {type(self).__name__} needs MC-dropout scores; got None")
            scores_or_probs = np.zeros(len(ids))
        scores = _as_scores(scores_or_probs, len(ids))
        if not ids or n == 0:
            return []
        chosen = self._choose(scores, min(n, len(ids)), np.random.default_rng(rng))
        return [ids[i] for i in chosen]


@SAMPLERS.register("random")
class RandomSampler(Sampler):
    """Uniformly random queries; needs no predictions (``select(None, ids, n, rng)``)."""

    needs_mc = False

    def score(self, probs: torch.Tensor, prediction: torch.Tensor | None = None) -> np.ndarray:
        return np.zeros(probs.shape[1])

    def _choose(self, scores: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.permutation(len(scores))[:n]


class UncertaintySampler(Sampler):
    """The ``n`` most uncertain images by one score of :mod:`noisyseg.inference.uncertainty`.

    Args:
        reduction: pixel map -> image score: ``mean``, ``sum`` or ``max``.
        distance_weighted: weight the pixel map with CEAL's distance transform of the prediction.
    """

    score_name: ClassVar[str]

    def __init__(self, reduction: str = "mean", distance_weighted: bool = False) -> None:
        if reduction not in REDUCTIONS:
            raise ConfigError(f"sampler reduction {reduction!r} is not one of {REDUCTIONS}")
        self.reduction, self.distance_weighted = reduction, distance_weighted

    @property
    def min_samples(self) -> int:  # type: ignore[override]
        return MIN_SAMPLES[self.score_name]

    def score(self, probs: torch.Tensor, prediction: torch.Tensor | None = None) -> np.ndarray:
        scores = image_scores(probs, self.score_name, self.reduction, self.distance_weighted, prediction)
        return scores.detach().cpu().double().numpy()

    def pixel_map(self, probs: torch.Tensor, prediction: torch.Tensor | None = None) -> torch.Tensor:
        """The per-pixel uncertainty ``[B, H, W]`` behind :meth:`score` (for plots of queried images)."""
        return pixel_uncertainty(probs, self.score_name, self.distance_weighted, prediction)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reduction={self.reduction!r}, distance_weighted={self.distance_weighted})"


@SAMPLERS.register("entropy")
class EntropySampler(UncertaintySampler):
    """Highest predictive entropy."""

    score_name = "entropy"


@SAMPLERS.register("variance")
class VarianceSampler(UncertaintySampler):
    """Highest MC variance (CEAL's score, greedily)."""

    score_name = "variance"


@SAMPLERS.register("bald")
class BaldSampler(UncertaintySampler):
    """Highest BALD mutual information (Houlsby et al. 2011; Gal et al. 2017)."""

    score_name = "bald"


def _apportion(n: int, weights: Sequence[float]) -> list[int]:
    """Split ``n`` in proportion to ``weights`` (largest remainder; ties to the earlier weight)."""
    exact = np.asarray(weights, np.float64) * n / sum(weights)
    counts = np.floor(exact).astype(int)
    for i in sorted(range(len(counts)), key=lambda i: -(exact[i] - counts[i]))[: n - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


@SAMPLERS.register("ceal")
class CEALSampler(UncertaintySampler):
    """CEAL's query mix (Górriz et al., ML4H 2017; ``get_oracle_index`` in their ``utils.py``).

    Score: distance-weighted MC variance summed over the image. Of ``n`` queries, split in the
    proportions ``low : middle : high`` (CEAL's 10 : 15 : 10 for n = 35; largest remainder otherwise):

    * ``low``: the lowest scores ("no detection" images: an empty prediction scores 0), ties in pool order;
    * ``high``: at random from the top ``high_bins`` bins of a ``bins``-bin histogram of the scores,
      visiting the least populated of those bins first (the sparse tail) until enough candidates;
    * ``middle``: at random from the band of bins ``[mode + middle_offset, middle_stop)``.

    A part with too few candidates leaves its slots to the most uncertain images not yet chosen. The
    three parts never overlap (CEAL's could). Deviation: CEAL's high bins skip the very last bin
    (``arange(bins - rate, bins - 1)``), an off-by-one that drops the top score; here it is included.
    NaN scores are left out of the histogram and only fill slots last.
    """

    score_name = "variance"

    def __init__(
        self,
        reduction: str = "sum",
        distance_weighted: bool = True,
        low: float = 10,
        middle: float = 15,
        high: float = 10,
        bins: int = 80,
        middle_offset: int = 6,
        middle_stop: int = 47,
        high_bins: int = 10,
    ) -> None:
        super().__init__(reduction, distance_weighted)
        if min(low, middle, high) < 0 or low + middle + high <= 0:
            raise ConfigError(f"ceal proportions low={low}, middle={middle}, high={high} must be >= 0 with a positive sum")
        if not (bins >= 1 and 1 <= high_bins <= bins and middle_offset >= 0 and 0 < middle_stop <= bins):
            raise ConfigError(f"ceal needs bins >= 1, 1 <= high_bins <= bins, middle_offset >= 0, "
                              f"0 < middle_stop <= bins; got {bins=}, {high_bins=}, {middle_offset=}, {middle_stop=}")
        self.proportions = (low, middle, high)
        self.bins, self.middle_offset, self.middle_stop, self.high_bins = bins, middle_offset, middle_stop, high_bins

    def _choose(self, scores: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        n_low, n_middle, n_high = _apportion(n, self.proportions)
        finite = np.flatnonzero(~np.isnan(scores))
        low = finite[np.argsort(scores[finite], kind="stable")[:n_low]]
        free = np.ones(len(scores), bool)
        free[low] = False
        high, middle = np.array([], int), np.array([], int)
        if len(finite):
            values = scores[finite]
            edges = np.histogram_bin_edges(values, self.bins)
            bin_of = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, self.bins - 1)  # last bin closed
            counts = np.bincount(bin_of, minlength=self.bins)
            candidates = np.array([], int)
            for b in sorted(range(self.bins - self.high_bins, self.bins), key=lambda b: (counts[b], -b)):
                if len(candidates) >= n_high:
                    break
                candidates = np.concatenate([candidates, finite[(bin_of == b) & free[finite]]])
            high = self._draw(np.sort(candidates), n_high, rng)
            free[high] = False
            start = int(np.argmax(counts)) + self.middle_offset
            band = finite[(bin_of >= start) & (bin_of < self.middle_stop) & free[finite]]
            middle = self._draw(band, n_middle, rng)
            free[middle] = False
        rest = [i for i in self.rank(scores) if free[i]][: n - len(low) - len(middle) - len(high)]
        return np.concatenate([low, middle, high, np.asarray(rest, int)]).astype(int)

    @staticmethod
    def _draw(candidates: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        return rng.choice(candidates, size=k, replace=False) if len(candidates) > k else candidates

    def __repr__(self) -> str:
        low, middle, high = self.proportions
        return (f"CEALSampler(reduction={self.reduction!r}, distance_weighted={self.distance_weighted}, low={low}, "
                f"middle={middle}, high={high}, bins={self.bins}, middle_offset={self.middle_offset}, "
                f"middle_stop={self.middle_stop}, high_bins={self.high_bins})")


def most_confident(scores: np.ndarray | torch.Tensor, ids: Sequence, k: int) -> list:
    """The ``k`` ids with the lowest uncertainty (pseudo-label candidates), ties in pool order, NaN never.

    With a distance-weighted score an empty prediction scores 0, so "most confident" would pick
    "no detection" images; rank pseudo-labels with an unweighted score (e.g. ``entropy``) instead.
    """
    ids = list(ids)
    scores = _as_scores(scores, len(ids))
    if k < 0:
        raise ConfigError(f"cannot pick a negative number of pseudo-labels (k={k})")
    finite = np.flatnonzero(~np.isnan(scores))
    order = finite[np.argsort(scores[finite], kind="stable")]
    return [ids[i] for i in order[:k]]


def score_pool(
    sampler: Sampler,
    model: nn.Module,
    images: torch.Tensor | Iterable[torch.Tensor],
    samples: int = 20,
    chunk: int = 8,
    mode: str = "loop",
    model_prediction: bool = True,
    confidence: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Image scores ``[N]`` (float64) of a pool: a tensor ``[N, C, H, W]`` split into ``chunk``-image
    batches, or an iterable of ``[b, C, H, W]`` batches. Only one chunk's MC stack ``[T, chunk, H, W]``
    is held at a time; a sampler with ``needs_mc = False`` gets zeros without running the model.

    ``model_prediction``: for a distance-weighted sampler, take the mask from the dropout-free forward
    (as CEAL intends) rather than from the mean MC probability.

    ``confidence=True`` returns ``(scores, entropy)``, the second the mean predictive entropy per image
    from the same MC samples (for :func:`most_confident` pseudo-labels; the dropout-free prediction's
    entropy for a model without dropout), so the pool is scored once for both.
    """
    batches = images.split(chunk) if isinstance(images, torch.Tensor) else images
    scores, entropies = [], []
    for x in batches:
        if not (sampler.needs_mc or confidence):
            scores.append(np.zeros(len(x)))
            continue
        has_dropout = bool(dropout_modules(model))
        probs = mc_predict(model, x, samples, mode=mode) if sampler.needs_mc or has_dropout else predict(model, x)[None]
        needs_pred = model_prediction and sampler.distance_weighted and sampler.needs_mc
        scores.append(sampler.score(probs, predict(model, x) if needs_pred else None) if sampler.needs_mc else np.zeros(len(x)))
        if confidence:
            entropies.append(image_scores(probs, "entropy", "mean").detach().cpu().double().numpy())
    scores_ = np.concatenate(scores) if scores else np.zeros(0)
    if not confidence:
        return scores_
    return scores_, np.concatenate(entropies) if entropies else np.zeros(0)
