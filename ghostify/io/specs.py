"""Model specs: the strings that name a model wherever ghostify accepts one.

* ``torchvision:NAME``: ``torchvision.models.get_model(NAME, weights=None)`` (detection and
  segmentation models with ``weights_backbone=None``: nothing downloaded)
* ``timm:NAME``: ``timm.create_model(NAME, pretrained=False)`` (input size from its config)
* ``ghostify:NAME``: ``ghostify.models.create(NAME)`` (GhostNet, the CIFAR baselines)
* ``package.module:factory``: imports the module and calls ``factory()`` (your own code)
* a file: ``.pt``/``.pth`` (a whole pickled module, loaded safely; or a state_dict with
  ``arch=SPEC``), ``.pt2`` (torch.export archive, no pickle), ``.ghost`` (a ghostify archive)

Named models start from their random init unless ``weights`` (a torchvision weight name such
as ``IMAGENET1K_V1`` or ``DEFAULT``, or a local weights file) or ``pretrained`` (timm) is
given; those come from the libraries' caches, never a download (:mod:`ghostify.io.weights`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ghostify.errors import GhostifyError, InvalidValueError
from ghostify.io.registry import build_source
from ghostify.io.safe_load import exported_module, safe_torch_load
from ghostify.io.weights import fit_error

__all__ = ["LoadedModel", "load_model", "parse_input_size", "expected_input", "DEFAULT_INPUT_SIZE", "FILE_SUFFIXES"]

DEFAULT_INPUT_SIZE = (3, 224, 224)
FILE_SUFFIXES = (".pt", ".pth", ".pt2", ".ghost", ".bin", ".ckpt")


@dataclass
class LoadedModel:
    """A model and what we know about where it came from."""

    model: nn.Module
    spec: str  # the spec as given
    kind: str  # torchvision | timm | ghostify | factory | file-module | file-state-dict | file-export | archive
    input_size: tuple[int, ...]  # (C, L), (C, H, W) or (C, T, H, W): one example, no batch
    input_size_source: str  # "flag" | "model config" | "archive" | "default"
    path: Path | None = None  # set for file specs
    arch: str | None = None  # the --arch spec used for a state_dict
    meta: dict[str, Any] = field(default_factory=dict)
    # where the weights came from: None for the architecture's random init; a torchvision weight
    # enum ("ResNet18_Weights.IMAGENET1K_V1"), timm's "hf-hub:REPO", or a file's path
    weights: str | None = None

    def default_init(self) -> tuple[str, str]:
        """("transfer" or "random", why): transfer for sources that carry trained weights.

        Files (whole modules, state_dicts, torch.export programs, archives) carry weights someone
        trained; a registry name built without pretrained weights has only its random init, so
        transferring from it would only copy noise.
        """
        weights = getattr(self, "weights", None)
        if self.kind in _TRAINED_KINDS:
            return "transfer", f"{_TRAINED_KINDS[self.kind]} carries trained weights"
        if weights is not None:
            return "transfer", f"the model was built with pretrained weights ({weights})"
        if self.kind == "factory":
            return "random", "a factory's weights are not known to be trained"
        return "random", "the model was built from its name without pretrained weights"


_TRAINED_KINDS = {"file-module": "the model file", "file-state-dict": "the state_dict", "file-export":
                  "the torch.export program", "archive": "the ghostify archive"}


def parse_input_size(text: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """'3,224,224' (or '3x224x224', or a sequence) -> (3, 224, 224); also C,L (1-D), C,T,H,W (3-D) and a
    single length L for a model whose forward takes (N, L), such as raw audio frames."""
    if text is None:
        return None
    if isinstance(text, str):
        parts = [p for p in text.replace("x", ",").replace("×", ",").split(",") if p.strip()]
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise InvalidValueError("input_size", f"must be C,H,W integers (e.g. 3,224,224; C,L or C,T,H,W for "
                                                  f"1-D or 3-D models), got {text!r}") from None
    else:
        try:
            values = list(text)
        except TypeError:
            raise InvalidValueError("input_size", f"must be C,H,W (e.g. 3,224,224), got {text!r}") from None
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise InvalidValueError("input_size", f"must be positive integers C,H,W, got {text!r}")
    if not 1 <= len(values) <= 4 or min(values) < 1:
        raise InvalidValueError("input_size", f"must be 1 to 4 positive integers: C,H,W (C,L, C,T,H,W, or L for a "
                                              f"forward taking (N, L)), got {text!r}")
    return tuple(values)


def expected_input(model: nn.Module) -> str | None:
    """What the model says it expects, in words (for "the model rejected that input size" errors)."""
    parts = []
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))), None)
    if first is not None:
        layout = {1: "C,L", 2: "C,H,W", 3: "C,T,H,W"}[len(first.kernel_size)]
        parts.append(f"C={first.in_channels} (its first convolution's input channels), a {layout} input")
    size = _config_input_size(model)
    if size is not None:
        parts.append(f"H×W={size[1]}×{size[2]} (its config)")
    else:
        for attr in ("image_size", "img_size"):  # torchvision ViT, timm models with a fixed size
            value = getattr(model, attr, None)
            if isinstance(value, int) or (isinstance(value, (tuple, list)) and len(value) == 2):
                h, w = (value, value) if isinstance(value, int) else value
                parts.append(f"H×W={h}×{w} (its {attr})")
                break
    return ", ".join(parts) or None


def _config_input_size(model: nn.Module) -> tuple[int, int, int] | None:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    if isinstance(cfg, dict) and cfg.get("input_size") and len(cfg["input_size"]) == 3:
        return tuple(int(v) for v in cfg["input_size"])  # type: ignore[return-value]
    return None


def _looks_like_file(spec: str) -> bool:
    return (os.sep in spec or spec.endswith(FILE_SUFFIXES) or os.path.exists(spec)) and not spec.startswith(
        ("torchvision:", "timm:", "ghostify:"))


def _load_file(path: Path, arch: str | None, trust: bool) -> tuple[nn.Module, str, dict[str, Any]]:
    if not path.exists():
        raise GhostifyError(f"{path}: no such file")
    if path.is_dir():
        raise GhostifyError(f"{path}: is a directory, expected a model file")
    if not os.access(path, os.R_OK):
        raise GhostifyError(f"{path}: permission denied")
    if path.suffix == ".ghost":
        from ghostify.io.archive import load_archive

        model, recipe = load_archive(path, trust=trust)
        return model, "archive", {"recipe": recipe}
    if path.suffix == ".pt2":
        return exported_module(path, trust=trust), "file-export", {}
    obj = safe_torch_load(path, trust=trust)
    if isinstance(obj, nn.Module):
        return obj, "file-module", {}
    state = obj.get("state_dict", obj.get("model", obj)) if isinstance(obj, dict) else None
    if (isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values())
            and not all(isinstance(k, str) for k in state)):
        raise GhostifyError(f"{path}: a dict of tensors whose keys are not all parameter names (strings); "
                            "not a state_dict")
    if isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values()):
        if arch is None:
            raise GhostifyError(f"{path}: holds a state_dict, not a model", param="arch",
                                hint="name its architecture (arch='torchvision:resnet50', say)")
        model = load_model(arch).model
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise GhostifyError(f"{path}: does not fit the architecture {arch}: {fit_error(exc)}",
                                param="arch") from None
        return model, "file-state-dict", {}
    raise GhostifyError(f"{path}: holds a {type(obj).__name__}, not a model or a state_dict")


def _default_input_size(model: nn.Module) -> tuple[tuple[int, ...], str]:
    """3,224,224; a video model (its first convolution 3-D) gets the clip torchvision's video models use."""
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))), None)
    if isinstance(first, nn.Conv3d):
        return (first.in_channels, 16, 112, 112), "default"
    return DEFAULT_INPUT_SIZE, "default"


def load_model(
    spec: str,
    input_size: str | Sequence[int] | None = None,
    arch: str | None = None,
    trust: bool = False,
    weights: str | os.PathLike | None = None,
    pretrained: bool = False,
) -> LoadedModel:
    """Build or load the model ``spec`` names (see the module docstring), in eval mode.

    ``weights``: for a named model, a torchvision weight name (``IMAGENET1K_V1``, ``DEFAULT``)
    or a local weights file (safetensors or a state_dict, read without running code);
    ``pretrained``: its default pretrained weights (timm's, or torchvision's ``DEFAULT``). Both
    are read from the libraries' caches; a missing file raises :class:`MissingWeightsError`
    saying where to place it. The result's ``weights`` says where the weights came from.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise GhostifyError("empty model spec: give torchvision:NAME, timm:NAME, ghostify:NAME, "
                            "package.module:factory or a model file")
    spec = spec.strip()
    path: Path | None = None
    meta: dict[str, Any] = {}
    weights = None if weights is None else os.fspath(weights)
    if _looks_like_file(spec):
        if weights is not None or pretrained:
            raise GhostifyError(f"{spec}: a model file carries its own weights; weights and pretrained apply to "
                                "named models (torchvision:NAME, timm:NAME, ...)",
                                param="weights" if weights is not None else "pretrained")
        path = Path(spec)
        model, kind, meta = _load_file(path, arch, trust)
        source_of_weights: str | None = str(path.resolve())
    else:
        built = build_source(spec, weights=weights, pretrained=pretrained)
        model, kind, source_of_weights = built.model, built.kind, built.weights
    size = parse_input_size(input_size)
    source = "flag"
    if size is None and "recipe" in meta:
        size, source = tuple(meta["recipe"]["input_size"]), "archive"
    if size is None:
        size = _config_input_size(model)
        source = "model config"
    if size is None:
        size, source = _default_input_size(model)
    model.eval()
    return LoadedModel(model=model, spec=spec, kind=kind, input_size=size, input_size_source=source,
                       path=path, arch=arch, meta=meta, weights=source_of_weights)
