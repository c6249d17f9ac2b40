"""One small name -> object registry used by every plug-in kind (models, losses, datasets, ...)."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Generic, Iterator, TypeVar

from noisyseg.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to plug-ins; filled with the :meth:`register` decorator next to each plug-in.

    >>> MODELS = Registry("model")
    >>> @MODELS.register("unet")
    ... class UNet: ...
    >>> MODELS.get("unet")  # doctest: +ELLIPSIS
    <class '...UNet'>
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; valid choices: {', '.join(sorted(self._items))}"
            ) from None

    def build(self, name: str, **kwargs: Any) -> Any:
        """Call the plug-in ``name`` with ``kwargs``; unknown options are a ConfigError naming the valid ones."""
        factory = self.get(name)
        try:
            inspect.signature(factory).bind(**kwargs)
        except TypeError as err:
            valid = [p for p in inspect.signature(factory).parameters if p != "self"]
            raise ConfigError(f"{self.kind} {name!r}: {err}; valid options: {', '.join(valid)}") from None
        return factory(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
