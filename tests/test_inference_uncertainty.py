"""Uncertainty scores (noisyseg.inference.uncertainty): known answers on hand-built stacks, reductions,
NaN, chunked equals all at once, CEAL's distance weights."""
from __future__ import annotations

import pytest
import torch

from noisyseg.errors import ConfigError
from noisyseg.inference import bald, distance_weights, entropy, image_scores, predicted_mask, variance


def stack(*columns: list[float]) -> torch.Tensor:
    """[T, B, 1, 1] probabilities: one list of T samples per image."""
    return torch.tensor(columns, dtype=torch.float32).T[:, :, None, None]


def test_scores_known_answers():
    agree0, agree1, split, half = [0.0] * 4, [1.0] * 4, [0.0, 1.0, 0.0, 1.0], [0.5] * 4
    probs = stack(agree0, agree1, split, half)
    assert variance(probs).flatten().tolist() == pytest.approx([0, 0, 0.25, 0])
    assert entropy(probs).flatten().tolist() == pytest.approx([0, 0, 1, 1])
    assert bald(probs).flatten().tolist() == pytest.approx([0, 0, 1, 0], abs=1e-6)  # split: max; 0.5: none


def test_scores_rank_a_graded_stack():
    graded = stack([0.5, 0.5], [0.4, 0.6], [0.2, 0.8], [0.0, 1.0])  # same mean, growing disagreement
    for score in ("variance", "bald"):
        s = image_scores(graded, score, "mean")
        assert torch.all(s[1:] > s[:-1]), score
    e = image_scores(stack([0.5, 0.5], [0.3, 0.3], [0.1, 0.1], [0.0, 0.0]), "entropy", "mean")
    assert torch.all(e[1:] < e[:-1])


def test_reductions():
    probs = torch.zeros(2, 1, 2, 2)
    probs[1, 0, 0, 0] = 1.0  # one pixel of variance 0.25
    assert image_scores(probs, "variance", "sum").item() == pytest.approx(0.25)
    assert image_scores(probs, "variance", "mean").item() == pytest.approx(0.0625)
    assert image_scores(probs, "variance", "max").item() == pytest.approx(0.25)
    with pytest.raises(ConfigError, match="reduction"):
        image_scores(probs, "variance", "median")
    with pytest.raises(ConfigError, match="valid choices"):
        image_scores(probs, "margin")


@pytest.mark.parametrize("score", ["variance", "bald"])
def test_fewer_than_two_samples_is_an_error_for_variance_scores(score):
    with pytest.raises(ConfigError, match="at least 2"):
        image_scores(torch.rand(1, 2, 4, 4), score)
    assert image_scores(torch.rand(1, 2, 4, 4), "entropy").shape == (2,)  # entropy is fine with T = 1


def test_nan_probabilities_give_nan_scores():
    probs = torch.rand(3, 2, 4, 4)
    probs[1, 0, 2, 2] = float("nan")
    for score in ("variance", "entropy", "bald"):
        for reduction in ("mean", "sum", "max"):
            s = image_scores(probs, score, reduction)
            assert torch.isnan(s[0]) and torch.isfinite(s[1]), (score, reduction)


@pytest.mark.parametrize("score", ["variance", "entropy", "bald"])
@pytest.mark.parametrize("weighted", [False, True])
def test_chunked_scoring_equals_all_at_once(score, weighted):
    probs = torch.rand(5, 7, 12, 12, generator=torch.Generator().manual_seed(0))
    whole = image_scores(probs, score, "sum", weighted)
    parts = torch.cat([image_scores(probs[:, i:i + 3], score, "sum", weighted) for i in range(0, 7, 3)])
    assert torch.allclose(parts, whole, rtol=1e-6)


def test_distance_weights_follow_ceal():
    mask = torch.zeros(3, 7, 7, dtype=torch.bool)
    mask[0, 1:6, 1:6] = True  # 5x5 square: EDT 1 on its rim, 2 inside, 3 at the centre
    mask[2] = True  # no background
    w = distance_weights(mask)
    assert w[0, 3, 3] == 1.0 and w[0, 0, 0] == 0.0  # deepest point 1, background 0
    assert w[0, 1, 3] == pytest.approx(1 / 3) and w[0, 2, 3] == pytest.approx(2 / 3)  # near the contour: low
    assert torch.all(w[1] == 0) and torch.all(w[2] == 1)  # empty prediction / no background
    # weighting: the same uncertainty counts more deep inside the predicted lesion than at its border
    probs = torch.full((2, 1, 7, 7), 0.9)  # zero variance except where set below
    rim, centre = probs.clone(), probs.clone()
    rim[:, 0, 1, 3] = torch.tensor([0.6, 1.0])
    centre[:, 0, 3, 3] = torch.tensor([0.6, 1.0])
    pred = mask[:1]
    s_rim = image_scores(rim, "variance", "sum", True, pred)
    s_centre = image_scores(centre, "variance", "sum", True, pred)
    assert s_centre.item() == pytest.approx(3 * s_rim.item())
    outside = probs.clone()
    outside[:, 0, 0, 0] = torch.tensor([0.6, 1.0])
    assert image_scores(outside, "variance", "sum", True, pred).item() == 0.0


def test_distance_weights_default_to_the_mean_prediction():
    probs = torch.zeros(2, 1, 7, 7)
    probs[:, 0, 1:6, 1:6] = torch.tensor([0.55, 0.75])[:, None, None]  # mean 0.65 >= 0.5 inside
    assert torch.equal(predicted_mask(probs)[0], probs[0, 0] > 0)
