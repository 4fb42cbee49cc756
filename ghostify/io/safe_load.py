"""Loading model files without running code from them.

``torch.load(weights_only=True)`` by default. A whole pickled module (``torch.save(model)``)
loads when every global it references is an allow-listed class from torch, torchvision, timm or
ghostify: the globals are listed *before* unpickling
(``torch.serialization.get_unsafe_globals_in_checkpoint``) and only then passed to
``torch.serialization.safe_globals``. Anything else is refused, naming the global; ``trust=True``
unpickles it fully (and so runs whatever code the file carries).
"""

from __future__ import annotations

import importlib
import io
import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ghostify.errors import GhostifyError, UnsafeModelFileError

__all__ = ["safe_torch_load", "ALLOWED_PACKAGES", "is_torchscript_archive"]

ALLOWED_PACKAGES = ("torch", "torchvision", "timm", "ghostify")

# Plain data types a module's __dict__ commonly holds (the weights-only unpickler already
# accepts tensors, dicts, lists, tuples, OrderedDict, dtypes and devices by itself).
_PLAIN_TYPES = {"builtins.set", "builtins.frozenset", "builtins.slice", "builtins.complex",
                "collections.OrderedDict", "functools.partial", "torch.Size",
                "torch.nn.modules.module._WrappedHook"}


def _resolve(qualname: str) -> Any:
    module_name, _, attr = qualname.rpartition(".")
    while module_name:
        try:
            obj: Any = importlib.import_module(module_name)
        except ImportError:
            module_name, _, head = module_name.rpartition(".")
            attr = f"{head}.{attr}"
            continue
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj
    raise AttributeError(qualname)


def _allowed(qualname: str) -> Any:
    """The object for ``qualname`` if loading it runs no code beyond building a module; else None."""
    top = qualname.split(".", 1)[0]
    if qualname in _PLAIN_TYPES:
        return _resolve(qualname)
    if top not in ALLOWED_PACKAGES:
        return None
    try:
        obj = _resolve(qualname)
    except (AttributeError, ImportError, ValueError):
        return None
    if isinstance(obj, type) and issubclass(obj, nn.Module):
        return obj
    # enums and plain value types of those packages (e.g. timm's Format), never functions
    if isinstance(obj, type) and not issubclass(obj, (BaseException,)) and obj.__module__.split(".")[0] == top:
        import enum

        if issubclass(obj, enum.Enum):
            return obj
    # activation functions stored as attributes (torch.nn.functional.relu and the like)
    if callable(obj) and getattr(obj, "__module__", "") in ("torch.nn.functional", "torch._C._nn"):
        return obj
    return None


def is_torchscript_archive(data: bytes) -> bool:
    """TorchScript archives are zips holding ``code/`` and ``constants.pkl``."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = zf.namelist()
    except zipfile.BadZipFile:
        return False
    return any("/code/" in n or n.endswith("constants.pkl") for n in names)


def safe_torch_load(source: str | os.PathLike | bytes, trust: bool = False) -> Any:
    """``torch.load`` that refuses to run code unless ``trust`` (see the module docstring)."""
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
        label = "<bytes>"
    else:
        path = Path(source)
        label = str(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise GhostifyError(f"{label}: no such file") from None
        except IsADirectoryError:
            raise GhostifyError(f"{label}: is a directory, expected a model file") from None
        except PermissionError:
            raise GhostifyError(f"{label}: permission denied") from None
    if not data:
        raise GhostifyError(f"{label}: the file is empty")
    if is_torchscript_archive(data):
        raise GhostifyError(
            f"{label}: is a TorchScript archive; torch.fx cannot trace scripted code. Convert the "
            "Python model instead (ghostify convert torchvision:NAME, timm:NAME or package.module:factory), "
            "or save it with torch.save(model) / torch.export")
    if trust:
        try:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
        except Exception as exc:
            raise GhostifyError(f"{label}: cannot be loaded ({_first_line(exc)})") from exc
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))
    except Exception as exc:
        raise GhostifyError(f"{label}: not a readable PyTorch file (truncated or not a checkpoint: "
                            f"{_first_line(exc)})") from exc
    allowed = []
    for qualname in unsafe:
        obj = _allowed(qualname)
        if obj is None:
            raise UnsafeModelFileError(
                f"{label}: refuses to load: it references {qualname}, which is not an allow-listed "
                f"module class of {', '.join(ALLOWED_PACKAGES)}; pass --trust (trust=True) only if you "
                "trust the file, since that executes code stored in it")
        allowed.append(obj)
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise GhostifyError(f"{label}: cannot be loaded safely ({_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:240]
