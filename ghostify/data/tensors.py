"""Tensors from files, loaded without running code: calibration inputs in a model's own format.

* ``.safetensors``: one tensor is the forward's argument; several are its keyword arguments
  (by name), unless they are named ``0``, ``1``, ... (positional arguments);
* ``.npy``: one array (``allow_pickle=False``);
* ``.pt`` / ``.pth``: ``torch.load(weights_only=True)`` of a tensor, a tuple or list of tensors
  (positional arguments) or a dict of tensors (keyword arguments).

The batch is along dim 0 of every tensor.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ghostify.errors import GhostifyError
from ghostify.utils import first_line

__all__ = ["TENSOR_SUFFIXES", "load_tensor_file", "is_tensor_file"]

TENSOR_SUFFIXES = (".safetensors", ".npy", ".pt", ".pth")


def is_tensor_file(spec: str | os.PathLike) -> bool:
    return str(spec).lower().endswith(TENSOR_SUFFIXES)


def _from_mapping(tensors: dict[str, Any], path: Path) -> Any:
    if not tensors:
        raise GhostifyError(f"{path}: holds no tensor")
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    if all(k.isdigit() for k in tensors):
        return tuple(tensors[k] for k in sorted(tensors, key=int))
    return dict(tensors)


def _check(value: Any, path: Path) -> Any:
    leaves = [value] if isinstance(value, torch.Tensor) else list(value.values()) if isinstance(value, dict) \
        else list(value) if isinstance(value, (tuple, list)) else None
    if not leaves or not all(isinstance(t, torch.Tensor) for t in leaves):
        raise GhostifyError(f"{path}: expected a tensor, or a tuple/dict of tensors, got {type(value).__name__}")
    return tuple(value) if isinstance(value, list) else value


def load_tensor_file(path: str | os.PathLike) -> Any:
    """The tensor (or tuple / dict of tensors) stored in ``path`` (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise GhostifyError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            return _check(_from_mapping(load_file(str(path)), path), path)
        if suffix == ".npy":
            import numpy as np

            return _check(torch.from_numpy(np.load(path, allow_pickle=False)), path)
        if suffix in (".pt", ".pth"):
            return _check(torch.load(path, map_location="cpu", weights_only=True), path)
    except GhostifyError:
        raise
    except Exception as exc:  # a corrupt or foreign file: its reader's own words, one line
        raise GhostifyError(f"{path}: cannot read tensors ({first_line(exc, 200)})") from None
    raise GhostifyError(f"{path}: not a tensor file (expected {', '.join(TENSOR_SUFFIXES)})")
