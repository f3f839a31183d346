"""Training methods, one module each; every module in this package registers itself on import."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from embedkit.methods.base import _REGISTRY, Method, MethodParams, TrainContext, register

__all__ = ["Method", "MethodParams", "TrainContext", "register", "get_method", "available_methods", "bound_method"]


def _load_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


def available_methods() -> list[str]:
    """Names of all registered methods."""
    _load_all()
    return sorted(_REGISTRY)


def get_method(name: str) -> type[Method]:
    """The method class registered under ``name``; ``KeyError`` with the known names otherwise."""
    _load_all()
    if name not in _REGISTRY:
        raise KeyError(f"unknown method {name!r}; expected one of: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def bound_method(section: Any) -> tuple[type[Method], Any]:
    """(method class bound to its parameters, the parameters) of a recipe's validated ``method`` section: the
    class :meth:`Method.bind` gives (for ``st-loss``, the one whose columns are its loss's)."""
    cls = get_method(section.name)
    params = section.params() if hasattr(section, "params") else None  # the object validation made
    if params is None:
        params = cls.params_cls.model_validate({k: v for k, v in section.model_dump().items() if k != "name"})
    return cls.bind(params), params
