"""Samplers (noisyseg.active.samplers): pool scoring chunk by chunk, known picks on hand-built stacks,
ties and NaN, CEAL's bins, the registry and its config files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from test_inference_mc import images, tiny_unet
from test_inference_uncertainty import stack

from noisyseg.active import SAMPLERS, CEALSampler, build_sampler, most_confident, score_pool
from noisyseg.active import mc_predict, predict  # the re-exports of noisyseg.inference
from noisyseg.errors import ConfigError

SAMPLER_CONF = Path(__file__).resolve().parents[1] / "conf" / "active" / "sampler"
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_score_pool_scores_chunk_by_chunk():
    model, x = tiny_unet("head"), images(5)
    for sampler in (build_sampler("bald"), build_sampler("ceal")):
        torch.manual_seed(0)
        chunked = score_pool(sampler, model, x, samples=3, chunk=2)
        torch.manual_seed(0)  # the same masks: per chunk, as score_pool draws them
        ref = np.concatenate([sampler.score(mc_predict(model, x[i:i + 2], 3), predict(model, x[i:i + 2]))
                              for i in range(0, 5, 2)])
        assert chunked.shape == (5,) and np.allclose(chunked, ref)
    assert np.array_equal(score_pool(build_sampler("random"), model, x), np.zeros(5))


# --- samplers -----------------------------------------------------------------------------------

IDS = [f"img{i}" for i in range(6)]


def test_uncertainty_samplers_pick_the_most_uncertain():
    probs = stack([0.0, 0.0], [0.5, 0.5], [0.1, 0.1], [0.0, 1.0], [1.0, 1.0], [0.3, 0.3])
    assert build_sampler("entropy").select(probs, IDS, 2, 0) == ["img1", "img3"]  # both entropy 1: pool order
    assert build_sampler("bald").select(probs, IDS, 1, 0) == ["img3"]
    assert build_sampler("variance").select(probs, IDS, 1, 0) == ["img3"]
    scores = build_sampler("entropy").score(probs)
    assert build_sampler("entropy").select(scores, IDS, 3, 0) == ["img1", "img3", "img5"]


def test_ties_nan_and_pool_exhaustion():
    sampler = build_sampler("variance")
    scores = np.array([0.1, np.nan, 0.3, 0.3, 0.0, 0.2])
    with pytest.warns(RuntimeWarning, match="NaN"):
        assert sampler.select(scores, IDS, 3) == ["img2", "img3", "img5"]  # tie in pool order
    with pytest.warns(RuntimeWarning):
        assert sampler.select(scores, IDS, 50) == ["img2", "img3", "img5", "img0", "img4", "img1"]  # NaN last
    assert sampler.select(np.zeros(0), [], 5) == []
    assert sampler.select(np.ones(6), IDS, 0) == []
    with pytest.raises(ConfigError):
        sampler.select(np.ones(6), IDS, -1)
    with pytest.raises(ValueError, match="scores"):
        sampler.select(np.ones(5), IDS, 2)
    with pytest.raises(ConfigError, match="needs MC"):
        sampler.select(None, IDS, 2)


def test_random_sampler_is_deterministic_per_rng():
    sampler = build_sampler("random")
    a = sampler.select(None, IDS, 3, np.random.default_rng(4))
    assert a == sampler.select(None, IDS, 3, np.random.default_rng(4)) == sampler.select(None, IDS, 3, 4)
    assert len(set(a)) == 3 and set(a) <= set(IDS)
    rng = np.random.default_rng(4)
    first, second = sampler.select(None, IDS, 6, rng), sampler.select(None, IDS, 6, rng)
    assert first != second  # a Generator advances in place (720 orders: a repeat is unlikely, and seeded)
    assert sorted(sampler.select(None, IDS, 10, 0)) == sorted(IDS)


def ceal_pool():
    """Scores in [0, 1], 10 bins of 0.1: 4 zeros (no detection), 30 at the mode 0.15, 10 in the
    middle band 0.4-0.6, a sparse high tail (0.85 alone in bin 8; 0.95, 0.97, 1.0 in bin 9)."""
    groups = {"zero": [0.0] * 4, "mode": [0.15] * 30, "mid": list(np.linspace(0.4, 0.6, 10)),
              "high8": [0.85], "high9": [0.95, 0.97, 1.0]}
    scores, ids, group = [], [], {}
    for name, values in groups.items():
        for j, v in enumerate(values):
            ids.append(f"{name}{j}")
            scores.append(v)
            group[ids[-1]] = name
    order = np.random.default_rng(0).permutation(len(ids))  # shuffled pool
    return np.array(scores)[order], [ids[i] for i in order], group


def test_ceal_picks_low_middle_and_high():
    scores, ids, group = ceal_pool()
    sampler = CEALSampler(low=2, middle=3, high=2, bins=10, middle_offset=1, middle_stop=8, high_bins=2)
    chosen = sampler.select(scores, ids, 7, np.random.default_rng(0))
    assert len(chosen) == len(set(chosen)) == 7
    zeros_in_pool_order = [i for i in ids if group[i] == "zero"]
    assert chosen[:2] == zeros_in_pool_order[:2]  # lowest scores, ties in pool order
    assert all(group[i] == "mid" for i in chosen[2:5])  # random from bins [mode 1 + 1, 8)
    # top 2 bins: bin 8 (one image) is too small for 2 queries, so both bins are candidates
    assert {group[i] for i in chosen[5:]} <= {"high8", "high9"}
    assert chosen == sampler.select(scores, ids, 7, np.random.default_rng(0))  # deterministic per rng
    assert sampler.select(scores, ids, 7, np.random.default_rng(1))[:2] == chosen[:2]


def test_ceal_takes_the_sparsest_high_bin_first():
    scores, ids, group = ceal_pool()
    sampler = CEALSampler(low=0, middle=0, high=1, bins=10, high_bins=2, middle_stop=10)
    assert [group[i] for i in sampler.select(scores, ids, 1, 0)] == ["high8"]


def test_ceal_proportions_scale_and_exhaust():
    scores, ids, group = ceal_pool()
    sampler = build_sampler("ceal", bins=10, middle_offset=1, middle_stop=8, high_bins=2)  # 10 : 15 : 10
    chosen = sampler.select(scores, ids, 14, 0)  # 4 : 6 : 4
    assert [group[i] for i in chosen[:4]] == ["zero"] * 4
    assert all(group[i] == "mid" for i in chosen[4:10])
    assert all(group[i].startswith("high") for i in chosen[10:])
    everything = sampler.select(scores, ids, 100, 0)
    assert sorted(everything) == sorted(ids)
    short = CEALSampler(low=0, middle=1, high=0, bins=10, middle_offset=1, middle_stop=3)  # band [0.2, 0.3): empty
    assert [scores[ids.index(i)] for i in short.select(scores, ids, 2, 0)] == [1.0, 0.97]  # filled: most uncertain


def test_ceal_bad_options():
    with pytest.raises(ConfigError):
        CEALSampler(low=0, middle=0, high=0)
    with pytest.raises(ConfigError):
        CEALSampler(bins=10, middle_stop=47)
    with pytest.raises(ConfigError, match="valid options"):
        build_sampler("ceal", lowest=3)
    with pytest.raises(ConfigError, match="reduction"):
        build_sampler("entropy", reduction="median")


def test_ceal_scores_empty_predictions_lowest():
    probs = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.4  # image 0: no detection
    probs[:, 1:, 2:6, 2:6] += 0.55
    s = build_sampler("ceal").score(probs)
    assert s[0] == 0.0 and np.all(s[1:] > 0)


def test_most_confident():
    scores = np.array([0.3, np.nan, 0.1, 0.1, 0.9, 0.0])
    assert most_confident(scores, IDS, 3) == ["img5", "img2", "img3"]
    assert most_confident(scores, IDS, 10) == ["img5", "img2", "img3", "img0", "img4"]  # never NaN
    assert most_confident(torch.tensor(scores), IDS, 0) == []


# --- registry and config files ------------------------------------------------------------------

def test_sampler_configs_match_the_registry():
    files = sorted(p.stem for p in SAMPLER_CONF.glob("*.yaml"))
    assert files == SAMPLERS.names()
    for path in SAMPLER_CONF.glob("*.yaml"):
        cfg = OmegaConf.to_container(OmegaConf.load(path))
        assert cfg.pop("name") == path.stem
        assert isinstance(build_sampler(path.stem, **cfg), SAMPLERS.get(path.stem))


def test_unknown_sampler_names_the_valid_ones():
    with pytest.raises(ConfigError, match="bald, ceal, entropy, random, variance"):
        build_sampler("margin")
