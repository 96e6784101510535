"""Model registry: factory functions registered by name, created with :func:`create_model`.

A factory is a function ``name(pretrained=False, **kwargs) -> nn.Module`` decorated with
:func:`register_model`;
its ``__name__`` is the registry key and a second registration under the same name is an error.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from dscmr.errors import ConfigError

F = TypeVar("F", bound=Callable[..., nn.Module])

_model_entrypoints: dict[str, Callable[..., nn.Module]] = {}
_model_modules: dict[str, str] = {}


def register_model(fn: F) -> F:
    """Decorator registering a model factory under its function name.

    Raises:
        ValueError: A model with the same name is already registered.
    """
    name = fn.__name__
    if name in _model_entrypoints:
        raise ValueError(f"model {name!r} is already registered (by {_model_modules[name]}); pick another factory name")
    _model_entrypoints[name] = fn
    _model_modules[name] = fn.__module__
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the registered models matching the shell-style ``pattern`` (``fnmatch``)."""
    return sorted(fnmatch.filter(_model_entrypoints, pattern))


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered model."""
    return name in _model_entrypoints


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    """The factory registered under ``name``.

    Raises:
        ConfigError: Unknown name (the message lists the registered models).
    """
    if name not in _model_entrypoints:
        raise ConfigError(f"unknown vision model {name!r}; choose one of: {', '.join(list_models())}")
    return _model_entrypoints[name]


def create_model(name: str, pretrained: bool = False, **overrides: Any) -> nn.Module:
    """Build the registered model ``name``.

    Args:
        name: Registry key, e.g. ``"mobilenet_v2_100"`` (see :func:`list_models`).
        pretrained: Load pretrained weights (only models that have them; others raise).
        **overrides: Keyword arguments of the model's constructor (``num_classes=10``, ``drop_rate=0.1``,
            ``pretrained_path="weights.pth"`` ...).

    Raises:
        ConfigError: Unknown model name or an option the model does not accept.
    """
    fn = model_entrypoint(name)
    try:
        return fn(pretrained=pretrained, **overrides)
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc):
            raise ConfigError(f"model {name!r}: {exc}") from None
        raise
