"""MC dropout, uncertainty scores and samplers (noisyseg.active): known answers on hand-built stacks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from noisyseg import bench
from noisyseg.active import (
    SAMPLERS, CEALSampler, NoDropoutError, bald, build_sampler, distance_weights, entropy, image_scores, mc_dropout,
    mc_predict, most_confident, predict, predicted_mask, score_pool, variance,
)
from noisyseg.errors import ConfigError, NoisysegError
from noisyseg.models import UNet

SAMPLER_CONF = Path(__file__).resolve().parents[1] / "conf" / "active" / "sampler"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_unet(position: str = "bottleneck", dropout: float = 0.5) -> UNet:
    torch.manual_seed(0)
    model = UNet(depth=2, base_width=4, norm="batch", dropout=dropout, dropout_position=position)
    with torch.no_grad():  # non-trivial running statistics, so train-mode BN would change the output
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


def images(b: int = 3, size: int = 16) -> torch.Tensor:
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(1))


# --- MC dropout ---------------------------------------------------------------------------------

def test_mc_dropout_switches_only_dropout_and_restores_modes():
    model = tiny_unet().train()
    model.head.eval()  # a mixed state must come back exactly
    before = {name: m.training for name, m in model.named_modules()}
    with mc_dropout(model):
        assert model.dropout.training
        assert all(not m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
        assert not model.training
    assert {name: m.training for name, m in model.named_modules()} == before


def test_mc_dropout_restores_modes_after_an_exception():
    model = tiny_unet().eval()
    with pytest.raises(RuntimeError, match="boom"):
        with mc_dropout(model):
            raise RuntimeError("boom")
    assert not any(m.training for m in model.modules())


def test_mc_predict_leaves_batch_norm_statistics_alone():
    model = tiny_unet().train()
    stats = [b.clone() for b in model.buffers()]
    mc_predict(model, images(), samples=2)
    assert all(torch.equal(a, b) for a, b in zip(stats, model.buffers()))
    assert model.training and model.dropout.training


@pytest.mark.parametrize("mode", ["loop", "naive"])
def test_no_dropout_is_a_clear_error(mode):
    model = tiny_unet(dropout=0.0).eval()
    with pytest.raises(NoDropoutError, match="no dropout layer") as err:
        mc_predict(model, images(), samples=4, mode=mode)
    assert isinstance(err.value, NoisysegError)
    assert not any(m.training for m in model.modules())  # modes untouched by the failed call
    with pytest.raises(NoDropoutError):
        with mc_dropout(nn.Sequential(nn.Conv2d(3, 1, 1), nn.Dropout(0.0))):
            pass


@pytest.mark.parametrize("position", ["bottleneck", "decoder", "head"])
@pytest.mark.parametrize("chunk", [None, 2])
def test_fast_loop_equals_naive_under_the_same_seed(position, chunk):
    model, x = tiny_unet(position), images()
    out = {}
    for mode in ("naive", "loop"):
        torch.manual_seed(123)
        out[mode] = mc_predict(model, x, samples=5, mode=mode, chunk=chunk)
    assert out["loop"].shape == (5, 3, 16, 16)  # [T, B, H, W]
    assert torch.equal(out["loop"], out["naive"])
    assert (out["loop"].std(dim=0) > 0).any()  # the samples really differ


def test_naive_is_t_full_forwards():
    model, x = tiny_unet("decoder"), images()
    torch.manual_seed(5)
    got = mc_predict(model, x, samples=3, mode="naive")
    torch.manual_seed(5)
    with mc_dropout(model), torch.no_grad():
        want = torch.stack([torch.sigmoid(model(x))[:, 0] for _ in range(3)])
    assert torch.equal(got, want)


@pytest.mark.parametrize("position", ["bottleneck", "head"])
def test_batched_has_the_right_shape_and_distribution(position):
    model, x = tiny_unet(position), images(2)
    torch.manual_seed(0)
    loop = mc_predict(model, x, samples=200, mode="loop")
    torch.manual_seed(1)
    batched = mc_predict(model, x, samples=200, mode="batched", chunk=1)
    assert batched.shape == loop.shape == (200, 2, 16, 16)
    assert not torch.equal(batched[0], batched[1])  # independent masks per sample
    spread = loop.std(dim=0).mean()
    assert (batched.mean(0) - loop.mean(0)).abs().mean() < 0.2 * spread
    assert batched.std(dim=0).mean() == pytest.approx(spread.item(), rel=0.15)


def test_batched_equals_naive_on_cpu():
    # sample-major repetition (row t * B + b) and a CPU generator that fills masks element by element
    # give the same masks; convolutions over T * B rows may round differently
    model, x = tiny_unet("decoder"), images()
    out = {}
    for mode in ("naive", "batched"):
        torch.manual_seed(7)
        out[mode] = mc_predict(model, x, samples=4, mode=mode)
    assert torch.allclose(out["batched"], out["naive"], rtol=0, atol=1e-6)


def test_generic_module_falls_back_to_naive():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Dropout2d(0.5), nn.Conv2d(4, 1, 1))
    out = {}
    for mode in ("loop", "batched", "naive"):
        torch.manual_seed(3)
        out[mode] = mc_predict(model, images(), samples=3, mode=mode)
    assert out["loop"].shape == (3, 3, 16, 16)
    assert torch.equal(out["loop"], out["naive"]) and torch.equal(out["batched"], out["naive"])


def test_a_stochastic_prefix_is_refused_by_the_fast_path():
    class Split(nn.Module):
        def __init__(self):
            super().__init__()
            self.drop, self.conv = nn.Dropout(0.5), nn.Conv2d(3, 1, 1)

        def prefix(self, x):
            return self.drop(x)

        def suffix(self, state):
            return self.conv(state)

        def forward(self, x):
            return self.suffix(self.prefix(x))

    with pytest.raises(ConfigError, match="prefix"):
        mc_predict(Split(), images(), samples=2, mode="loop")
    assert mc_predict(Split(), images(), samples=2, mode="naive").shape == (2, 3, 16, 16)


def test_bad_mc_arguments():
    model = tiny_unet()
    with pytest.raises(ConfigError, match="mode"):
        mc_predict(model, images(), samples=2, mode="fast")
    with pytest.raises(ConfigError, match="samples"):
        mc_predict(model, images(), samples=0)


def test_predict_is_deterministic_and_restores_modes():
    model = tiny_unet().train()
    a, b = predict(model, images()), predict(model, images(), chunk=2)
    assert a.shape == (3, 16, 16) and torch.allclose(a, b, atol=1e-6)
    assert model.training


# --- scores -------------------------------------------------------------------------------------

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


def test_bench_mc_smoke(capsys, tmp_path):
    out = tmp_path / "mc.json"
    bench.main(["mc", "--size", "16", "--samples", "2", "--batch", "1", "--depth", "2", "--base-width", "4",
                "--repeats", "1", "--warmup", "0", "--threads", "1", "--json", str(out)])
    report = json.loads(out.read_text())
    assert set(report["positions"]) == {"bottleneck", "decoder", "head"}
    assert all(rows["loop"]["equal"] for rows in report["positions"].values())
    assert "loop" in capsys.readouterr().out
