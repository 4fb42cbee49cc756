"""Loading model files without running code from them.

``torch.load(weights_only=True)`` by default. A whole pickled module (``torch.save(model)``)
loads when every global it references is an allow-listed class from torch, torchvision, timm or
ghostify: the globals are listed *before* unpickling
(``torch.serialization.get_unsafe_globals_in_checkpoint``) and only then passed to
``torch.serialization.safe_globals``. Anything else is refused, naming the global; ``trust=True``
unpickles it fully (and so runs whatever code the file carries).

What "allow-listed" means, precisely (``_allowed``):

* an ``nn.Module`` subclass, an ``enum.Enum`` of the same package, or an activation function of
  ``torch.nn.functional``, defined in torch, torchvision, timm or ghostify, or one of ghostify's
  plain-data dataclasses (the ``ConversionPlan`` a converted model carries); never a plain
  function or any other callable (a pickle can *call* every global it may name);
* resolved through modules that are already imported, or public (no ``_``-prefixed part, not
  ``torch.testing``) submodules of those packages, so that a file cannot make us import an
  arbitrary module for its import-time side effects;
* a few plain data types a module's ``__dict__`` holds (``torch.Size``, ``set``, ...).

Files in the legacy (pre-1.6, non-zip) format cannot be listed before unpickling; they are read
by the same weights-only unpickler, adding allow-listed globals one at a time as it asks for them
(it refuses, without calling anything, each global it has not been given).

``torch.export`` (``.pt2``) archives hold JSON and raw tensor bytes, but ``torch.export.load``
falls back to ``torch.load(weights_only=False)`` / ``pickle.loads`` for some members (sample
inputs, "pickled" weights, opaque constants): a crafted archive runs code through them.
``safe_export_load`` loads them with those fallbacks replaced by the weights-only unpickler.

TorchScript archives are recognised and explained: fx cannot trace scripted code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import importlib
import io
import os
import pickle
import re
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ghostify.errors import GhostifyError, UnsafeModelFileError
from ghostify.utils import first_line

__all__ = ["safe_torch_load", "safe_export_load", "exported_module", "ALLOWED_PACKAGES", "is_torchscript_archive",
           "is_export_archive", "read_model_bytes"]

ALLOWED_PACKAGES = ("torch", "torchvision", "timm", "ghostify")

# Plain data types a module's __dict__ commonly holds (the weights-only unpickler already
# accepts tensors, dicts, lists, tuples, OrderedDict, dtypes and devices by itself).
_PLAIN_TYPES = {"builtins.set", "builtins.frozenset", "builtins.slice", "builtins.complex",
                "collections.OrderedDict", "functools.partial", "torch.Size",
                "torch.nn.modules.module._WrappedHook"}

# Submodules never imported on a file's behalf (import-time side effects, test machinery).
_NEVER_IMPORT = ("torch.testing", "torch.utils.benchmark", "torch.utils.bottleneck", "torch._dynamo",
                 "torch._inductor")

# Why a well-known refused global is refused (a better hint than the generic one).
_HINTS = {
    "torch.fx.graph_module.reduce_graph_module": "a pickled torch.fx GraphModule carries generated Python code; "
    "save a ghostify model with ghostify.save (a .ghost archive) instead of torch.save",
    "torch.fx.graph_module.reduce_package_graph_module": "a pickled torch.fx GraphModule carries generated Python "
    "code; save a ghostify model with ghostify.save (a .ghost archive) instead of torch.save",
}


def _import(module_name: str) -> Any:
    """The module, if it is imported already or may be imported on a file's behalf; else None."""
    if module_name in sys.modules:
        return sys.modules[module_name]
    parts = module_name.split(".")
    if parts[0] not in ALLOWED_PACKAGES or any(p.startswith("_") for p in parts):
        return None
    if any(module_name == n or module_name.startswith(n + ".") for n in _NEVER_IMPORT):
        return None
    try:
        return importlib.import_module(module_name)
    except Exception:  # noqa: BLE001 - a name that does not import is simply not allowed
        return None


def _resolve(qualname: str) -> Any:
    """The object a pickle's ``module.name`` global refers to (AttributeError if none)."""
    module_name, _, attr = qualname.rpartition(".")
    top = qualname.split(".", 1)[0]
    if top in ALLOWED_PACKAGES:
        _import(top)  # the package itself (its __init__ imports the public submodules)
    while module_name:
        module = _import(module_name)
        if module is not None:
            obj: Any = module
            for part in attr.split("."):
                obj = getattr(obj, part)
            return obj
        module_name, _, head = module_name.rpartition(".")
        attr = f"{head}.{attr}"
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
    except Exception:  # noqa: BLE001 - unresolvable means not allowed
        return None
    # a class *defined* in an allowed package (a foreign class re-exported by an allowed module is not)
    obj_is_class = isinstance(obj, type) and str(getattr(obj, "__module__", "")).split(".")[0] in ALLOWED_PACKAGES
    if obj_is_class and issubclass(obj, nn.Module):
        return obj
    # ghostify's own plain-data dataclasses (the ConversionPlan a converted model carries)
    if obj_is_class and dataclasses.is_dataclass(obj) and obj.__module__.startswith("ghostify."):
        return obj
    # enums of those packages (e.g. timm's Format), never other classes or functions
    if obj_is_class and issubclass(obj, enum.Enum) and obj.__module__.split(".")[0] == top:
        return obj
    # activation functions stored as attributes (torch.nn.functional.relu and the like)
    if callable(obj) and not isinstance(obj, type) and getattr(obj, "__module__", "") in (
            "torch.nn.functional", "torch._C._nn"):
        return obj
    return None


def _refusal(label: str, qualname: str) -> UnsafeModelFileError:
    hint = _HINTS.get(qualname)
    why = f" ({hint})" if hint else ""
    return UnsafeModelFileError(
        f"{label}: refused: it references {qualname}{why}, which is not an allow-listed module class of "
        f"{', '.join(ALLOWED_PACKAGES)}")


def _zip_names(data: bytes) -> list[str] | None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, ValueError, OSError):  # ValueError/OSError: corrupt zip structures
        return None


def is_torchscript_archive(data: bytes) -> bool:
    """TorchScript archives are zips holding ``<name>/code/`` and ``constants.pkl``."""
    names = _zip_names(data) or []
    return any("/code/" in n or n.endswith("constants.pkl") for n in names)


def is_export_archive(data: bytes) -> bool:
    """torch.export (.pt2) archives are zips holding ``<name>/archive_format`` and ``models/*.json``."""
    names = _zip_names(data) or []
    return any(n.endswith("/archive_format") or n == "archive_format" for n in names)


def read_model_bytes(source: str | os.PathLike | bytes) -> tuple[bytes, str]:
    """The bytes of a model file and a label for messages; clear errors for unreadable files."""
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise GhostifyError("<bytes>: the data is empty")
        return bytes(source), "<bytes>"
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
    except OSError as exc:
        raise GhostifyError(f"{label}: cannot be read ({exc.strerror or exc})") from None
    if not data:
        raise GhostifyError(f"{label}: the file is empty")
    return data, label


_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)|unsupported GLOBAL ([\w.]+)")
# torch.save's legacy (pre-1.6) format starts with the pickled magic number 0x1950a86a20f9469cfc6c
_LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)[2:]


def _unpickler_reason(exc: BaseException) -> str:
    """The useful part of torch's long "Weights only load failed" message."""
    text = str(exc)
    match = _UNSUPPORTED_GLOBAL.search(text)
    if match is not None:
        return f"it references {match.group(1) or match.group(2)}, which the weights-only unpickler refuses"
    at = text.find("WeightsUnpickler error:")
    if at < 0:
        return _first_line(exc)
    reason = " ".join(text[at + len("WeightsUnpickler error:"):].split())
    return reason.split(" Check the documentation")[0].split(" Please use")[0][:240]


def _legacy_weights_only(data: bytes, label: str) -> Any:
    """Legacy-format file: let the weights-only unpickler name each global it needs, allow-listed ones only."""
    if data[2:2 + len(_LEGACY_MAGIC)] != _LEGACY_MAGIC:
        raise GhostifyError(f"{label}: not a PyTorch file (neither a torch.save zip nor the legacy format; "
                            "garbage or truncated)")
    allowed: list[Any] = []
    for _ in range(512):  # each round adds one global; a real model references a few dozen
        try:
            with torch.serialization.safe_globals(allowed):
                return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - classified below
            match = _UNSUPPORTED_GLOBAL.search(str(exc))
            if match is None:
                reason = _unpickler_reason(exc)
                if "persistent_load" in reason:  # a whole module pickled with its source code
                    raise UnsafeModelFileError(
                        f"{label}: a whole model saved in torch's legacy (pre-1.6) format cannot be loaded "
                        "without running its pickle; re-save it with a current torch (torch.save, or better "
                        "its state_dict, loaded with its architecture)") from None
                raise GhostifyError(f"{label}: not a readable PyTorch file (truncated, or corrupt: {reason})") from None
            qualname = match.group(1) or match.group(2)
            obj = _allowed(qualname)
            if obj is None or obj in allowed:
                raise _refusal(label, qualname) from None
            allowed.append(obj)
    raise GhostifyError(f"{label}: references too many globals to be a model file")


def safe_torch_load(source: str | os.PathLike | bytes, trust: bool = False) -> Any:
    """``torch.load`` that refuses to run code unless ``trust`` (see the module docstring)."""
    data, label = read_model_bytes(source)
    if is_torchscript_archive(data):
        raise GhostifyError(
            f"{label}: is a TorchScript archive; torch.fx cannot trace scripted code. Convert the "
            "Python model instead (ghostify convert torchvision:NAME, timm:NAME or package.module:factory), "
            "or save it with torch.save(model) or torch.export.save (.pt2)")
    if is_export_archive(data):
        raise GhostifyError(f"{label}: is a torch.export archive; give it the .pt2 suffix so ghostify loads it "
                            "as one (torch.export.load)")
    if trust:
        try:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
        except Exception as exc:
            raise GhostifyError(f"{label}: cannot be loaded ({_unpickler_reason(exc)})") from exc
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001
        if _zip_names(data) is None and "checkpoint returned by torch.save" in str(exc):
            return _legacy_weights_only(data, label)  # pre-1.6 format, or not a torch file at all
        raise GhostifyError(f"{label}: not a readable PyTorch file (truncated, or not a torch.save checkpoint: "
                            f"{_first_line(exc)})") from None
    allowed = []
    for qualname in sorted(unsafe, key=lambda q: q not in _HINTS):  # the most telling refusal first
        obj = _allowed(qualname)
        if obj is None:
            raise _refusal(label, qualname)
        allowed.append(obj)
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise GhostifyError(f"{label}: cannot be loaded safely ({_unpickler_reason(exc)})") from None


def _refuse_pickle(*args: Any, **kwargs: Any) -> Any:
    raise UnsafeModelFileError("the archive holds a pickled Python object, which could run code")


@contextlib.contextmanager
def _weights_only_torch_load() -> Iterator[None]:
    """Within the block, every ``torch.load`` is weights-only and plain pickle loads are refused.

    ``torch.export.load`` asks for ``weights_only=False`` on some archive members; here it gets the
    weights-only unpickler instead (tensors, containers, primitives still load). Not thread-safe:
    it swaps module attributes for the duration of one load.
    """
    from torch.export.pt2_archive import _package

    original_load = torch.load
    original_pickle = _package.pickle
    original_obj = getattr(torch._C, "_pickle_load_obj", None)

    def weights_only_load(f: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return original_load(f, *args, **kwargs)

    class _NoPickle:
        loads = staticmethod(_refuse_pickle)
        load = staticmethod(_refuse_pickle)

    torch.load = weights_only_load  # type: ignore[assignment]
    _package.pickle = _NoPickle  # type: ignore[assignment]
    if original_obj is not None:
        torch._C._pickle_load_obj = _refuse_pickle  # type: ignore[attr-defined]
    try:
        yield
    finally:
        torch.load = original_load  # type: ignore[assignment]
        _package.pickle = original_pickle
        if original_obj is not None:
            torch._C._pickle_load_obj = original_obj  # type: ignore[attr-defined]


def safe_export_load(source: str | os.PathLike | bytes, trust: bool = False) -> torch.export.ExportedProgram:
    """``torch.export.load`` without its pickle fallbacks (see the module docstring)."""
    data, label = read_model_bytes(source)
    if not is_export_archive(data):
        if is_torchscript_archive(data):
            raise GhostifyError(f"{label}: is a TorchScript archive, not a torch.export (.pt2) archive; torch.fx "
                                "cannot trace scripted code: convert the Python model instead")
        raise GhostifyError(f"{label}: not a torch.export (.pt2) archive (truncated, or another format)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt2"
        path.write_bytes(data)
        try:
            if trust:
                return torch.export.load(str(path))
            with _weights_only_torch_load():
                return torch.export.load(str(path))
        except UnsafeModelFileError as exc:
            raise UnsafeModelFileError(f"{label}: refused: {exc.message}") from None
        except Exception as exc:  # noqa: BLE001
            text = _unpickler_reason(exc)
            if "Weights only load failed" in str(exc) or "Unsupported global" in str(exc):
                raise UnsafeModelFileError(f"{label}: refused: a member of the archive is a pickle ({text})") from None
            raise GhostifyError(f"{label}: not a readable torch.export archive ({text})") from None


def _first_line(exc: BaseException) -> str:
    return first_line(exc).split(". This is an internal miniz error")[0]  # torch's zip errors ramble on


def exported_module(path: Path, trust: bool = False) -> nn.Module:
    """The module of a torch.export archive (no pickle), with ``train``/``eval`` usable again."""
    # safe_export_load: torch.export.load itself falls back to pickle for some members (runs code)
    program = safe_export_load(path, trust=trust)
    module = program.module()
    for attr in ("train", "eval"):  # torch.export blocks them on the instance; the graph is inference-only
        module.__dict__.pop(attr, None)
    return module
