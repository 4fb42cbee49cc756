"""A model registry in timm's style: ``@register_model`` on a factory, ``create("name")``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ghostify.errors import GhostifyError

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` under its function name."""
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_MODELS)


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` (e.g. ``create("ghostnet_100", num_classes=10)``)."""
    if name not in _MODELS:
        import difflib

        close = difflib.get_close_matches(name, list(_MODELS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise GhostifyError(f"unknown ghostify model {name!r}{hint}")
    return _MODELS[name](**kwargs)
