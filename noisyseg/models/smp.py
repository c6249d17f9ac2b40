"""Any segmentation_models_pytorch architecture over any of its encoders (timm's included), by name.

``model=smp model.arch=Unet model.encoder=resnet34`` builds ``smp.create_model("Unet", "resnet34",
classes=1)`` inside :class:`SMPNet`, which adds what noisyseg needs of a network: one channel of logits,
a dropout layer where CEAL wants one (``dropout_position``: ``head``, between the decoder and the
segmentation head, or ``bottleneck``, on the deepest encoder feature) and the ``prefix``/``suffix``
split that lets MC dropout run the deterministic part once (:mod:`noisyseg.inference.mc`). The smp
model itself is ``net.model``: ``net.model.state_dict()`` loads into a plain smp model of the same
arguments.

``encoder_weights``: ``null`` (random initialisation), a name smp knows (``imagenet``, ...: smp downloads
and caches them) or the path of a local file (a ``torch.save``'d or ``.safetensors`` state dict of the
encoder, of a whole smp model, or of the timm/torchvision classifier the encoder comes from).

An optional dependency: ``pip install -e '.[smp]'``.
"""
from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from noisyseg.errors import ConfigError
from noisyseg.models.registry import MODELS

DROPOUT_POSITIONS = ("head", "bottleneck")
RESERVED = ("classes", "in_channels", "encoder_name", "encoder_weights", "encoder_depth", "aux_params", "activation")
_STUBS: list = []  # keeps the torchvision op schemas of _import_with_stubs alive


def import_smp() -> Any:
    """``segmentation_models_pytorch``, or a :class:`ConfigError` naming the extra that installs it."""
    try:
        import segmentation_models_pytorch as smp
    except ImportError as err:
        raise ConfigError("model=smp needs segmentation_models_pytorch: pip install -e '.[smp]' "
                          f"(or pip install segmentation-models-pytorch) ({err})") from None
    except RuntimeError as err:
        if not re.search(r"operator torchvision::\w+ does not exist", str(err)):
            raise
        smp = _import_with_stubs()
    return smp


def _import_with_stubs() -> Any:
    """Import smp when torchvision's compiled operators do not load beside this torch (a CUDA torchvision
    next to a CPU torch: ``operator torchvision::nms does not exist``). smp's networks use torchvision's
    Python modules only, so the missing operators get placeholder schemas; torchvision.ops (nms, ...) then
    fail if called."""
    warnings.warn("torchvision's compiled operators do not match this torch build; noisyseg declared "
                  "placeholders so that segmentation_models_pytorch imports (its networks do not use them). "
                  "Install the torchvision built for your torch to silence this.", RuntimeWarning, stacklevel=3)
    for _ in range(64):
        try:
            import segmentation_models_pytorch as smp
            return smp
        except RuntimeError as err:
            match = re.search(r"operator torchvision::(\w+) does not exist", str(err))
            if match is None:
                raise
            for name in [m for m in sys.modules if m.split(".")[0] in ("torchvision", "timm", "segmentation_models_pytorch")]:
                del sys.modules[name]  # partly imported: import again from the start
            if not _STUBS:
                _STUBS.append(torch.library.Library("torchvision", "FRAGMENT"))
            _STUBS[0].define(f"{match.group(1)}(Tensor[] args) -> Tensor")
    raise ConfigError("segmentation_models_pytorch does not import: torchvision does not match torch")


class SMPNet(nn.Module):
    """An smp model (``self.model``) with one output channel and a dropout layer (``self.dropout``),
    split for MC dropout: :meth:`prefix` runs up to the dropout, :meth:`suffix` from it. For architectures
    with smp's standard forward (encoder -> decoder -> segmentation head: all but DPT)."""

    def __init__(self, model: nn.Module, dropout: float = 0.0, dropout_position: str = "head") -> None:
        super().__init__()
        self.model = model
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.dropout_position = dropout_position

    def prefix(self, x: torch.Tensor) -> Any:
        """Deterministic part: the encoder's features (``bottleneck``) or the decoder's output (``head``)."""
        self.model.check_input_shape(x)
        features = self.model.encoder(x)  # [x, stride-2 features, ..., deepest]
        return features if self.dropout_position == "bottleneck" else self.model.decoder(features)

    def suffix(self, state: Any) -> torch.Tensor:
        """Dropout and everything after it: ``[B, 1, H, W]`` logits."""
        if self.dropout_position == "bottleneck":
            state = self.model.decoder([*state[:-1], self.dropout(state[-1])])
        else:
            state = self.dropout(state)
        return self.model.segmentation_head(state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.suffix(self.prefix(x))


class SMPNetWhole(nn.Module):
    """:class:`SMPNet` for an architecture with its own forward (DPT): the dropout at the head, through a
    forward pre-hook; no split (MC dropout runs whole forwards)."""

    def __init__(self, model: nn.Module, dropout: float = 0.0, dropout_position: str = "head") -> None:
        super().__init__()
        if dropout_position != "head":
            raise ConfigError(f"model.dropout_position={dropout_position!r}: {type(model).__name__} has its own "
                              "forward, so only 'head' is supported for it")
        self.model = model
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        model.segmentation_head.register_forward_pre_hook(self._drop)  # a bound method: deepcopy rebinds it

    def _drop(self, head: nn.Module, args: tuple) -> tuple:
        return (self.dropout(args[0]), *args[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _standard_forward(model: nn.Module) -> bool:
    base = sys.modules.get("segmentation_models_pytorch.base.model")
    return base is not None and type(model).forward is base.SegmentationModel.forward \
        and getattr(model, "classification_head", None) is None


@MODELS.register("smp")
def build_smp(
    arch: str = "Unet",
    encoder: str = "resnet34",
    encoder_weights: Optional[str] = None,
    encoder_depth: int = 5,
    in_channels: int = 3,
    dropout: float = 0.0,
    dropout_position: str = "head",
    params: Optional[dict[str, Any]] = None,
) -> nn.Module:
    """A segmentation_models_pytorch network mapping ``[B, in_channels, H, W]`` to ``[B, 1, H, W]`` logits.

    Args:
        arch: an smp architecture (``Unet``, ``UnetPlusPlus``, ``FPN``, ``DeepLabV3Plus``, ``MAnet``, ...;
            any case).
        encoder: an smp encoder (``resnet34``, ``efficientnet-b0``, ``mobilenet_v2``, ...) or a timm one
            (``tu-<timm name>``).
        encoder_weights: ``None``, a name smp downloads (``imagenet``, ...) or a local weights file.
        encoder_depth: encoder stages; H and W must be divisible by ``2**encoder_depth``.
        dropout: dropout probability (0: none); CEAL's value is 0.5.
        dropout_position: ``head`` (before the segmentation head) or ``bottleneck`` (on the deepest
            encoder feature, as CEAL after the U-Net's bottleneck).
        params: further keyword arguments of the architecture (``decoder_channels``,
            ``decoder_attention_type``, ...).
    """
    if dropout_position not in DROPOUT_POSITIONS:
        raise ConfigError(f"model.dropout_position={dropout_position!r} is not one of {DROPOUT_POSITIONS} for model=smp")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"model.dropout={dropout} must be in [0, 1)")
    params = dict(params or {})
    reserved = sorted(set(params) & set(RESERVED))
    if reserved:
        raise ConfigError(f"model.params.{reserved[0]} is set by noisyseg (one channel of logits; use model.encoder, "
                          f"model.encoder_weights, model.encoder_depth, model.in_channels)")
    smp = import_smp()
    local = _local_weights(encoder_weights)
    try:
        model = smp.create_model(arch, encoder, encoder_weights=None if local else encoder_weights,
                                 in_channels=in_channels, classes=1, encoder_depth=encoder_depth, **params)
    except KeyError as err:  # smp: unknown architecture or encoder, with the valid ones
        raise ConfigError(f"model=smp: {err.args[0] if err.args else err}") from None
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model=smp arch={arch} encoder={encoder}: {err}") from None
    if local:
        load_encoder_weights(model.encoder, local)
    wrapper = SMPNet if _standard_forward(model) else SMPNetWhole
    return wrapper(model, dropout, dropout_position)


def _local_weights(weights: Optional[str]) -> Optional[Path]:
    if weights is None:
        return None
    path = Path(str(weights)).expanduser()
    if path.is_file():
        return path
    if path.suffix in (".pt", ".pth", ".bin", ".safetensors", ".ckpt") or "/" in str(weights) or "\\" in str(weights):
        raise ConfigError(f"model.encoder_weights={weights!r}: no such file")
    return None  # a name smp knows (imagenet, ...)


def load_encoder_weights(encoder: nn.Module, path: Path) -> None:
    """Load a state dict from ``path`` into ``encoder``: the encoder's own keys, a whole smp model's
    (``encoder.`` prefix) or the classifier's the encoder was made from (classifier tensors ignored;
    timm encoders keep the classifier under ``model.``)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"model.encoder_weights={str(path)!r}: not a state dict")
    own = encoder.state_dict()
    candidates = [state, {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")},
                  {"model." + k: v for k, v in state.items()}]
    best = max(candidates, key=lambda c: len(own.keys() & c.keys()))
    missing = [k for k in own if k not in best and not k.endswith("num_batches_tracked")]
    wrong = [k for k in own if k in best and best[k].shape != own[k].shape]
    if missing or wrong:
        bad = missing or wrong
        raise ConfigError(f"model.encoder_weights={str(path)!r} does not fit the encoder: "
                          f"{len(missing)} of its {len(own)} tensors missing, {len(wrong)} of another shape "
                          f"(e.g. {bad[0]})")
    encoder.load_state_dict({k: best[k] for k in own if k in best}, strict=False)
