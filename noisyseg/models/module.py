"""Your own network: ``model=module model._target_=mypkg.nets.make_net +model.width=32``.

``_target_`` is the import path of an ``nn.Module`` class or of a function returning one (Hydra's
``_target_`` convention); every other key of the ``model`` node but ``input_size`` is passed to it as
a keyword argument (``in_channels`` only if it has a parameter of that name). The contract, ``[B, in_channels, H, W]`` images
to ``[B, 1, H, W]`` logits, is checked once when the model is built, on zeros of ``input_size``
(``data.size`` by default) in eval mode, with an error that says what came out instead.

For MC dropout (CEAL's samplers, ``predict --mc-samples``) the network needs an ``nn.Dropout*`` layer
with ``p > 0``; with methods ``prefix(x) -> state`` and ``suffix(state) -> logits`` (``forward(x) ==
suffix(prefix(x))``, the dropout inside ``suffix``) the deterministic part runs once for all samples
(see :mod:`noisyseg.inference.mc`).
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

import torch
from torch import nn

from noisyseg.errors import ConfigError
from noisyseg.models.registry import MODELS


def locate(path: str) -> Callable[..., Any]:
    """The object at import path ``"package.module.name"`` (nested attributes allowed)."""
    if not isinstance(path, str) or not path or path.startswith(".") or "." not in path:
        raise ConfigError(f"model._target_={path!r}: give the import path of a class or function, "
                          "e.g. mypkg.nets.make_net")
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):  # the longest importable module prefix, then attributes
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError as err:
            if err.name is not None and not ".".join(parts[:cut]).startswith(err.name):
                raise  # the module exists but fails to import one of its own dependencies
            continue
        try:
            for name in parts[cut:]:
                obj = getattr(obj, name)
        except AttributeError:
            raise ConfigError(f"model._target_={path!r}: module {'.'.join(parts[:cut])!r} has no "
                              f"{'.'.join(parts[cut:])!r}") from None
        return obj
    raise ConfigError(f"model._target_={path!r}: no module {parts[0]!r} can be imported (is it installed, "
                      "or on PYTHONPATH?)")


def check_contract(model: nn.Module, in_channels: int, size: int, what: str = "the model") -> None:
    """Raise a :class:`ConfigError` unless ``model`` maps ``[2, in_channels, size, size]`` to ``[2, 1, size, size]``.

    Runs in eval mode under ``no_grad`` on the model's device and dtype (batch-norm statistics and the
    RNG are untouched) and restores every module's mode."""
    param = next(model.parameters(), None)
    x = torch.zeros(2, in_channels, size, size, device=param.device if param is not None else "cpu",
                    dtype=param.dtype if param is not None and param.is_floating_point() else torch.float32)
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            out = model(x)
    except Exception as err:
        raise ConfigError(f"{what} fails on a [2, {in_channels}, {size}, {size}] input (noisyseg's contract: "
                          f"[B, C, H, W] images -> [B, 1, H, W] logits): {type(err).__name__}: {err}") from None
    finally:
        for m, training in modes:
            m.training = training
    got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if not isinstance(out, torch.Tensor) or list(out.shape) != [2, 1, size, size]:
        raise ConfigError(f"{what} maps a [2, {in_channels}, {size}, {size}] input to {got}; noisyseg needs "
                          f"[B, 1, H, W] logits of the input's size (one channel, no sigmoid)")


def _takes(factory: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # some builtins have no signature
        return False
    return name in params and params[name].kind in (params[name].POSITIONAL_OR_KEYWORD, params[name].KEYWORD_ONLY)


@MODELS.register("module")
def build_module(_target_: str, in_channels: int = 3, input_size: int = 64, **kwargs: Any) -> nn.Module:
    """``_target_(**kwargs)``, an ``nn.Module`` whose contract is checked (see :func:`check_contract`).

    Args:
        _target_: import path of an ``nn.Module`` class or factory.
        in_channels: image channels of the contract check (and of ``_target_``, if it takes ``in_channels``).
        input_size: height and width of the contract check (``${data.size}`` in conf/model/module.yaml).
        **kwargs: keyword arguments of ``_target_``.
    """
    factory = locate(_target_)
    if not callable(factory):
        raise ConfigError(f"model._target_={_target_!r} is not a class or function")
    if _takes(factory, "in_channels"):  # a common parameter name: the check's and the network's
        kwargs = {"in_channels": in_channels, **kwargs}
    try:
        model = factory(**kwargs)
    except TypeError as err:
        raise ConfigError(f"model._target_={_target_!r} does not take these options ({', '.join(kwargs) or 'none'}): "
                          f"{err}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model._target_={_target_!r} returned a {type(model).__name__}, not an nn.Module")
    check_contract(model, in_channels, input_size, f"model._target_={_target_!r}")
    return model
