"""Models built from names: ``torchvision:NAME``, ``timm:NAME``, ``ghostify:NAME``, ``package.module:factory``.

No weights are downloaded: models built from names start from their random init.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Sequence

from torch import nn

from ghostify.errors import GhostifyError
from ghostify.utils import first_line

__all__ = ["build_named", "REGISTRIES"]

REGISTRIES = ("torchvision", "timm", "ghostify")  # built without running code the spec names


def _suggest(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


def _torchvision(name: str) -> nn.Module:
    import torchvision

    available = torchvision.models.list_models()
    if name not in available:
        raise GhostifyError(f"unknown torchvision model {name!r}{_suggest(name, available)}")
    return torchvision.models.get_model(name, weights=None)


def _timm(name: str) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise GhostifyError(f"unknown timm model {name!r}{_suggest(name, timm.list_models())}")
    return timm.create_model(name, pretrained=False)


def _ghostify(name: str) -> nn.Module:
    import ghostify.models as models

    if name not in models.list_models():
        raise GhostifyError(f"unknown ghostify model {name!r}{_suggest(name, models.list_models())}")
    return models.create(name)


def _factory(spec: str) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, but also ValueError/TypeError for malformed names, or the module's own
        raise GhostifyError(f"cannot import {module_name!r} for model spec {spec!r}: "
                            f"{type(exc).__name__}: {first_line(exc)}") from None
    factory = getattr(module, attr, None)
    if factory is None:
        raise GhostifyError(f"module {module_name!r} has no attribute {attr!r}")
    try:
        model = factory() if callable(factory) and not isinstance(factory, nn.Module) else factory
    except Exception as exc:  # the user's factory failed: their error, in one line (--debug shows the traceback)
        raise GhostifyError(f"{spec}() raised {type(exc).__name__}: {first_line(exc)}") from exc
    if not isinstance(model, nn.Module):
        raise GhostifyError(f"{spec!r} did not give a torch.nn.Module (got {type(model).__name__})")
    return model


def build_named(spec: str) -> tuple[nn.Module, str]:
    """(model, kind) for a registry name or a ``package.module:factory`` spec."""
    prefix, sep, name = spec.partition(":")
    if not sep or not name:
        raise GhostifyError(f"cannot read model spec {spec!r}: use torchvision:NAME, timm:NAME, "
                            "ghostify:NAME, package.module:factory or a path to a model file")
    if prefix == "torchvision":
        return _torchvision(name), "torchvision"
    if prefix == "timm":
        return _timm(name), "timm"
    if prefix == "ghostify":
        return _ghostify(name), "ghostify"
    return _factory(spec), "factory"
