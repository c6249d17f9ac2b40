"""The built-in U-Net's initialisations."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from noisyseg.errors import ConfigError
from noisyseg.models import UNet


def test_he_init_draws_each_layer_with_the_u_net_papers_std():
    torch.manual_seed(0)
    net = UNet(depth=3, base_width=16, norm="none", init="he")
    for module in net.modules():
        if isinstance(module, nn.ConvTranspose2d):  # one tap per input channel reaches an output pixel
            expected = (2.0 / module.in_channels) ** 0.5
        elif isinstance(module, nn.Conv2d):
            expected = (2.0 / (module.in_channels * module.kernel_size[0] * module.kernel_size[1])) ** 0.5
        else:
            continue
        if module.weight.numel() >= 1000:  # the sample std is within a few % of the target
            assert module.weight.std().item() == pytest.approx(expected, rel=0.1)
        assert torch.count_nonzero(module.bias) == 0


def test_without_normalisation_he_init_keeps_the_signal_that_the_default_loses():
    """Why the option exists: at the default initialisation the bottleneck's activations shrink by orders
    of magnitude, at He's they keep the input's scale."""
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    scale = {}
    for init in ("default", "he"):
        torch.manual_seed(0)
        net = UNet(depth=3, base_width=16, norm="none", init=init)
        with torch.no_grad():
            features, _, _ = net.prefix(x)
            scale[init] = features.pow(2).mean().sqrt().item()
    assert scale["default"] < 0.05 and 0.3 < scale["he"] < 3.0


def test_an_unknown_init_is_a_config_error():
    with pytest.raises(ConfigError, match="model.init"):
        UNet(init="xavier")
