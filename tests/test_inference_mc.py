"""MC dropout and deterministic prediction (noisyseg.inference.mc): only dropout switches, modes are
restored, the fast paths equal the naive one under the same seed, clear errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from noisyseg.errors import ConfigError, NoisysegError
from noisyseg.inference import NoDropoutError, mc_dropout, mc_predict, predict
from noisyseg.models import UNet


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


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
