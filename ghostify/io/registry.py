"""Models built from names: ``torchvision:NAME``, ``timm:NAME``, ``ghostify:NAME``, ``package.module:factory``.

Nothing is downloaded. Without ``weights``/``pretrained`` a model starts from its random init
(torchvision's detection and segmentation builders too: their ImageNet backbone, which they
would otherwise download, is not loaded). Pretrained weights come from the ecosystem's caches
or a local file (:mod:`ghostify.io.weights`).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ghostify.errors import GhostifyError
from ghostify.io.weights import (
    fit_error,
    load_weights_file,
    looks_like_weights_file,
    timm_pretrained_file,
    torchvision_state_dicts,
    torchvision_weights,
)
from ghostify.utils import first_line

__all__ = ["build_named", "build_source", "Built", "REGISTRIES"]

REGISTRIES = ("torchvision", "timm", "ghostify")  # built without running code the spec names


@dataclass
class Built:
    """A model built from a name, and where its weights came from (None: the random init)."""

    model: nn.Module
    kind: str
    weights: str | None = None


def _suggest(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


def _file(weights: str | None) -> Path | None:
    """``weights`` as a local file path, when it names one (else a registry's weight name, or None)."""
    return Path(weights).expanduser() if weights is not None and looks_like_weights_file(weights) else None


def _torchvision(name: str, weights: str | None, architecture_only: bool) -> Built:
    import torchvision

    available = torchvision.models.list_models()
    if name not in available:
        raise GhostifyError(f"unknown torchvision model {name!r}{_suggest(name, available)}")
    builder = torchvision.models.get_model_builder(name)
    kwargs = {}
    if "weights_backbone" in inspect.signature(builder).parameters:
        kwargs["weights_backbone"] = None  # detection/segmentation: their ImageNet backbone is a download
    path = _file(weights)
    if weights is None or path is not None:
        model = builder(weights=None, **kwargs)
        if path is not None and not architecture_only:
            load_weights_file(model, path, f"torchvision:{name}")
        return Built(model, "torchvision", None if path is None else str(path.resolve()))
    enum = torchvision_weights(name, weights)
    with torchvision_state_dicts(f"torchvision:{name}", architecture_only=architecture_only):
        model = builder(weights=enum, **kwargs)
    return Built(model, "torchvision", str(enum))


def _timm(name: str, weights: str | None, pretrained: bool, architecture_only: bool) -> Built:
    import timm

    if not timm.is_model(name):
        raise GhostifyError(f"unknown timm model {name!r}{_suggest(name, timm.list_models())}")
    arch, _, tag = name.partition(".")
    tags = [full.partition(".")[2] for full in timm.models.get_arch_pretrained_cfgs(arch)]
    if tag and tag not in tags:  # timm.is_model ignores the tag; create_model would raise
        raise GhostifyError(f"timm model {arch!r} has no pretrained tag {tag!r}{_suggest(tag, tags)}")
    if architecture_only:  # timm's pretrained weights never change the architecture
        return Built(timm.create_model(name, pretrained=False), "timm", None)
    path = _file(weights)
    if weights is not None and path is None:
        raise GhostifyError(f"timm:{name}: weights must be a local file for a timm model (got {weights!r})",
                            param="weights", hint="give a path, or pretrained=True for its default pretrained "
                                                  "weights (a tag in the name picks others: timm:NAME.TAG)")
    if path is None and not pretrained:
        return Built(timm.create_model(name, pretrained=False), "timm", None)
    source = None
    if path is None:
        path, source = timm_pretrained_file(name)  # the cached file; timm is never asked to fetch one
    elif not path.is_file():
        raise GhostifyError(f"{path}: no such weights file", param="weights")
    try:  # timm adapts the file as it would a download (classifier size, input channels, filters)
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    except Exception as exc:  # a file that does not fit or does not read: one line (--debug: the traceback)
        raise GhostifyError(f"{path}: timm could not load it into {name}: {fit_error(exc)}",
                            param="weights") from exc
    return Built(model, "timm", source or str(path.resolve()))


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


def build_source(spec: str, weights: str | None = None, pretrained: bool = False, *,
                 architecture_only: bool = False) -> Built:
    """Build the model a registry name or ``package.module:factory`` spec names.

    ``weights``: a torchvision weight name (``IMAGENET1K_V1``, ``DEFAULT``), or a local weights
    file (any spec). ``pretrained``: the default pretrained weights (timm; ``DEFAULT`` for
    torchvision). ``architecture_only``: build the architecture those weights imply (a
    torchvision enum can change it: an aux head, ``transform_input``) but load nothing, for an
    archive whose own weights replace them.
    """
    prefix, sep, name = spec.partition(":")
    if not sep or not name:
        raise GhostifyError(f"cannot read model spec {spec!r}: use torchvision:NAME, timm:NAME, "
                            "ghostify:NAME, package.module:factory or a path to a model file")
    if weights is not None and pretrained:
        raise GhostifyError("give weights or pretrained, not both", param="pretrained")
    if prefix == "torchvision":
        return _torchvision(name, "DEFAULT" if pretrained else weights, architecture_only)
    if prefix == "timm":
        return _timm(name, weights, pretrained, architecture_only)
    model, kind = (_ghostify(name), "ghostify") if prefix == "ghostify" else (_factory(spec), "factory")
    if pretrained:
        raise GhostifyError(f"{spec}: pretrained weights come from torchvision or timm; for this model give a "
                            "local weights file", param="pretrained")
    path = _file(weights)
    if weights is not None and path is None:
        raise GhostifyError(f"{spec}: weights must be a local file for this model (got {weights!r})",
                            param="weights")
    if path is not None and not architecture_only:
        load_weights_file(model, path, spec)
    return Built(model, kind, None if path is None else str(path.resolve()))


def build_named(spec: str) -> tuple[nn.Module, str]:
    """(model, kind) for a registry name or a ``package.module:factory`` spec, random init."""
    built = build_source(spec)
    return built.model, built.kind
