"""Networks from outside noisyseg: model=smp (segmentation_models_pytorch, timm encoders) and model=module
(any nn.Module by import path). Every meta backend against double backward in float64 on smp U-Net/ResNet-18,
U-Net/EfficientNet-B0, U-Net/MobileNetV2 and FPN, with no op left to forward_ad; MC dropout's split; encoder
weights from a local file; the contract check. Small encoders' first stages and 32 px images keep it fast."""
import copy
import sys
import warnings

import pytest
import torch
from torch import nn

from noisyseg.errors import ConfigError
from noisyseg.inference.mc import is_split, mc_predict
from noisyseg.losses import BCEDiceLoss, BCELoss
from noisyseg.meta import META_BACKENDS, MetaReweightedLoss, pixel_weights
from noisyseg.meta import backends as meta_backends
from noisyseg.models import build_model, check_contract
from noisyseg.models.smp import import_smp
from noisyseg.tangents import unsupported_ops

D = torch.float64
LR = 0.1
SMALL = {  # (arch, encoder, encoder_depth, params): the listed architectures, shrunk
    "Unet/resnet18": ("Unet", "resnet18", 3, {"decoder_channels": [16, 8, 8]}),
    "Unet/efficientnet-b0": ("Unet", "efficientnet-b0", 3, {"decoder_channels": [16, 8, 8]}),
    "Unet/mobilenet_v2": ("Unet", "mobilenet_v2", 3, {"decoder_channels": [16, 8, 8]}),
    "FPN/resnet18": ("FPN", "resnet18", 5, {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32}),
}


@pytest.fixture(autouse=True, scope="module")
def smp_and_one_thread():
    try:
        with warnings.catch_warnings():  # this machine's torchvision warning, not a fallback of jvp
            warnings.simplefilter("ignore", RuntimeWarning)
            import_smp()
    except ConfigError as err:
        pytest.skip(str(err))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors gain nothing from threads on a busy machine
    yield
    torch.set_num_threads(threads)


def small(name, dtype=D, dropout=0.2, position="head", seed=0):
    arch, encoder, depth, params = SMALL[name]
    torch.manual_seed(seed)
    return build_model("smp", arch=arch, encoder=encoder, encoder_depth=depth, dropout=dropout,
                       dropout_position=position, params=params).to(dtype).train()


def batches(dtype=D, size=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    make = lambda: (torch.randn(2, 3, size, size, generator=g, dtype=dtype),
                    (torch.rand(2, 1, size, size, generator=g) > 0.5).to(dtype))
    return make(), make()


def weights(backend, model, noisy, clean, loss=BCEDiceLoss()):
    torch.manual_seed(7)  # the same dropout masks for every backend
    return pixel_weights(model, loss, noisy, clean, LR, backend=backend)


@pytest.mark.filterwarnings("error::RuntimeWarning")  # a fallback of jvp to forward_ad would warn
@pytest.mark.parametrize("name", SMALL)
def test_every_backend_agrees_with_double_backward_float64(name):
    """BN in train mode and dropout active; jvp runs on its own rules (nothing falls back)."""
    model = small(name)
    noisy, clean = batches()
    assert unsupported_ops(model, noisy[0]) == []
    meta_backends._WARNED.clear()
    ref = weights("autograd", model, noisy, clean)
    assert ref.sum() > 0
    for backend in META_BACKENDS.names():
        got = weights(backend, model, noisy, clean)
        assert (got - ref).abs().max() <= 1e-9 * ref.abs().max(), backend


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_fused_step_trains_an_smp_model_as_the_separate_one():
    """The jvp step's weighted backward reuses its forward: same gradients and BN statistics as jvp_ad's."""
    m1 = small("Unet/mobilenet_v2")
    m2 = copy.deepcopy(m1)
    noisy, clean = batches()
    results = []
    for model, backend in ((m1, "jvp"), (m2, "jvp_ad")):
        torch.manual_seed(3)
        results.append(MetaReweightedLoss(BCELoss(), LR, backend=backend)(model, noisy, clean))
        results[-1].loss.backward()
    for (name, a), b in zip(m1.named_parameters(), m2.parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, rtol=1e-9, atol=1e-13), name
    assert all(torch.equal(a, b) for a, b in zip(m1.buffers(), m2.buffers()))


def test_jvp_runs_where_double_backward_cannot():
    """timm's MobileNetV3 (hard-swish, hard-sigmoid gates): torch has no double backward of hardsigmoid, so
    the literal recipe fails; the forward-mode backends need none and agree."""
    torch.manual_seed(0)
    model = build_model("smp", encoder="tu-mobilenetv3_small_100", encoder_depth=3,
                        params={"decoder_channels": [16, 8, 8]}).to(D).train()
    noisy, clean = batches()
    assert unsupported_ops(model, noisy[0]) == []
    ref = weights("jvp_ad", model, noisy, clean)
    assert (weights("jvp", model, noisy, clean) - ref).abs().max() <= 1e-9 * ref.abs().max()


@pytest.mark.parametrize("position", ["head", "bottleneck"])
def test_mc_dropout_split_equals_whole_forwards(position):
    model = small("Unet/resnet18", torch.float32, dropout=0.5, position=position).eval()
    assert is_split(model)
    images = torch.randn(3, 3, 32, 32)
    samples = {}
    for mode in ("naive", "loop", "batched"):
        torch.manual_seed(1)
        samples[mode] = mc_predict(model, images, 4, mode=mode)  # [T, B, H, W]
    assert samples["naive"].shape == (4, 3, 32, 32)
    assert torch.equal(samples["loop"], samples["naive"])
    assert torch.allclose(samples["batched"], samples["naive"], atol=1e-5)
    assert (samples["naive"][0] - samples["naive"][1]).abs().max() > 0  # the dropout samples
    assert not model.training and not model.dropout.training  # modes restored


def test_smp_options_and_errors():
    model = small("Unet/resnet18", torch.float32, dropout=0.0)
    plain = import_smp().create_model("Unet", "resnet18", encoder_weights=None, classes=1, encoder_depth=3,
                                      decoder_channels=[16, 8, 8])
    plain.load_state_dict(model.model.state_dict())  # net.model is the plain smp model
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(plain.eval()(x), model.eval()(x))
    with pytest.raises(ConfigError, match="unet"):  # smp lists its architectures
        build_model("smp", arch="Nope")
    with pytest.raises(ConfigError, match="nope"):
        build_model("smp", encoder="nope")
    with pytest.raises(ConfigError, match="model.params.classes is set by noisyseg"):
        build_model("smp", params={"classes": 2})
    with pytest.raises(ConfigError, match="dropout_position"):
        build_model("smp", dropout_position="decoder")
    with pytest.raises(ConfigError, match="no such file"):
        build_model("smp", encoder_weights="weights/missing.pt")
    check_contract(model, 3, 48)  # smp's Unet takes any size
    with pytest.raises(ConfigError, match="fails on a \\[2, 3, 48, 48\\] input.*divisible by 32"):
        check_contract(build_model("smp", arch="FPN", encoder="resnet18"), 3, 48)


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "segmentation_models_pytorch", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[smp\]'"):
        build_model("smp")


def test_encoder_weights_from_a_local_file(tmp_path):
    source = small("Unet/resnet18", torch.float32)
    encoder_state = source.model.encoder.state_dict()
    torch.save(encoder_state, tmp_path / "encoder.pt")
    torch.save({"state_dict": source.model.state_dict()}, tmp_path / "whole.pth")  # encoder.* keys inside
    for name in ("encoder.pt", "whole.pth"):
        arch, encoder, depth, params = SMALL["Unet/resnet18"]
        torch.manual_seed(5)  # another initialisation
        model = build_model("smp", arch=arch, encoder=encoder, encoder_depth=depth, params=params,
                            encoder_weights=str(tmp_path / name))
        assert all(torch.equal(v, encoder_state[k]) for k, v in model.model.encoder.state_dict().items()), name
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="does not fit the encoder"):
        build_model("smp", encoder="resnet18", encoder_weights=str(tmp_path / "other.pt"))
    # rebuilt for a checkpoint (predict, report): the file is not read
    model = build_model("smp", encoder="resnet18", encoder_weights=str(tmp_path / "gone.pt"), pretrained=False)
    assert isinstance(model, nn.Module)


class TinyNet(nn.Module):
    """A user's network: [B, C, H, W] -> [B, 1, H, W] logits, dropout inside, no prefix/suffix."""

    def __init__(self, in_channels: int = 3, width: int = 8, out: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.SiLU(),
                                  nn.Dropout2d(0.3), nn.Conv2d(width, out, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def make_tiny(width: int = 8) -> nn.Module:
    return TinyNet(width=width)


def test_module_by_import_path_and_its_contract():
    model = build_model("module", _target_=f"{__name__}.TinyNet", width=4, input_size=16)
    assert isinstance(model, TinyNet) and model.body[0].out_channels == 4 and model.training
    assert isinstance(build_model("module", _target_=f"{__name__}.make_tiny", width=2, input_size=16), TinyNet)
    assert not is_split(model) and mc_predict(model, torch.randn(2, 3, 16, 16), 3).shape == (3, 2, 16, 16)
    with pytest.raises(ConfigError, match=r"to \[2, 2, 16, 16\]; noisyseg needs \[B, 1, H, W\] logits"):
        build_model("module", _target_=f"{__name__}.TinyNet", out=2, input_size=16)
    with pytest.raises(ConfigError, match="fails on a \\[2, 1, 16, 16\\] input"):
        build_model("module", _target_=f"{__name__}.make_tiny", in_channels=1, input_size=16)
    with pytest.raises(ConfigError, match="does not take these options"):
        build_model("module", _target_=f"{__name__}.make_tiny", depth=3)
    with pytest.raises(ConfigError, match="has no 'Nope'"):
        build_model("module", _target_=f"{__name__}.Nope")
    with pytest.raises(ConfigError, match="not an nn.Module"):
        build_model("module", _target_="builtins.dict")


def test_train_predict_and_resume_an_smp_model(tmp_path, monkeypatch):
    """model=smp through the whole tool: the meta method (jvp, no fallback), resume after an interruption
    equal to the straight run, and the checkpoint rebuilt by predict (with MC dropout)."""
    from conftest import raise_at_epoch
    from hydra import compose, initialize_config_dir

    from noisyseg.config import CONFIG_DIR
    from noisyseg.predict import load_predictor
    from noisyseg.train import train

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["debug=fast", "data.params.count=48", "model=smp", "model.dropout=0.5",
                                          "method=meta", "trainer.steps_per_epoch=2"])
    meta_backends._WARNED.clear()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="meta backend jvp", category=RuntimeWarning)
        straight = train(cfg, tmp_path / "straight")
    with monkeypatch.context() as patch:
        raise_at_epoch(patch, 1, KeyboardInterrupt)
        with pytest.raises(KeyboardInterrupt):
            train(cfg, tmp_path / "resumed")
    cfg.resume = str(tmp_path / "resumed")
    assert train(cfg)["test"] == straight["test"]
    predictor = load_predictor(tmp_path / "straight", device="cpu")
    probs, unc = predictor.predict_image(torch.randint(0, 255, (40, 50, 3), dtype=torch.uint8).numpy(), mc_samples=3)
    assert probs.shape == unc.shape == (40, 50) and unc.max() > 0


def test_parameters_the_forward_pass_never_uses_are_found_for_ddp():
    """smp keeps the encoder stages below encoder_depth; DDP must be told (noisyseg.distributed.data_parallel)."""
    from noisyseg.distributed import unused_parameters

    shallow = build_model("smp", encoder="resnet18", encoder_depth=3, params={"decoder_channels": [16, 8, 8]})
    shallow.train()
    unused = unused_parameters(shallow, 3, 32)
    assert unused and all("encoder.layer3" in n or "encoder.layer4" in n for n in unused)
    assert shallow.training  # modes restored
    assert unused_parameters(build_model("unet", depth=2, base_width=4), 3, 32) == []
