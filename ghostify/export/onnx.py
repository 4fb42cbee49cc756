"""ONNX export with a parity check: the same path for original and converted models.

``export_onnx`` (1) optionally turns the model into its deployment form (:func:`ghostify.deploy`:
BN folded, concat-free Ghost modules, ...), (2) exports it with the exporter torch recommends
today (``torch.onnx.export(..., dynamo=True)``) and falls back to the TorchScript exporter where
that fails, (3) runs the ONNX file with onnxruntime (CPU, ORT_ENABLE_ALL, as deployed) and the
*given* torch model (eval mode) on the same seeded input, and reports the error
(:func:`ghostify.runtime.relative_error` defines it), and (4) writes the file through a
temporary file renamed into place.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import shutil
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ghostify.errors import GhostifyError, InvalidValueError
from ghostify.forward import IMAGES, check_forward, input_convention, numpy_outputs
from ghostify.runtime.session import onnx_session, relative_error
from ghostify.utils import atomic_write, eval_mode, first_line

__all__ = ["ExportResult", "export_onnx", "module_to_onnx", "DEFAULT_RTOL", "EXPORTERS"]

DEFAULT_RTOL = 1e-4
EXPORTERS = ("auto", "dynamo", "torchscript")
_TWO_GB = 2**31 - 1


@dataclass
class ExportResult:
    """What ``export_onnx`` did. ``passed`` is None when the parity check was skipped."""

    path: Path
    exporter: str  # "dynamo" or "torchscript"
    opset: int
    input_size: tuple[int, ...]
    dynamic_batch: bool
    deployed: bool
    max_abs_error: float | None
    max_rel_error: float | None
    rtol: float
    passed: bool | None
    written: bool
    seconds: float
    size_bytes: int
    fallback_reason: str | None = None  # why the dynamo exporter was not used
    check_batches: list[int] = field(default_factory=list)
    deploy_notes: list[str] = field(default_factory=list)
    # output values the parity check compared; 0 means it compared nothing (e.g. a detector that
    # found nothing above its score threshold): a pass then says nothing
    compared_values: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        data["input_size"] = list(self.input_size)
        return data


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters print progress and warnings; a library call should not."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


def _over_two_gb(model: nn.Module) -> bool:
    """Whether the weights alone come near protobuf's 2 GB message limit (then: external data)."""
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]) > _TWO_GB * 0.9


def _export_dynamo(model: nn.Module, x: torch.Tensor, opset: int | None,
                   dynamic_batch: bool) -> tuple[bytes | Any, int]:
    """(serialized model, opset); a model over 2 GB comes back as its ``onnx.ModelProto`` (external data)."""
    kwargs: dict[str, Any] = {}
    if dynamic_batch:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=4096)},)
    with _quiet():
        program = torch.onnx.export(model, (x,), dynamo=True, opset_version=opset, input_names=["input"],
                                    verbose=False, optimize=True, **kwargs)
    proto = program.model_proto
    opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset or 0)
    if _over_two_gb(model):  # protobuf cannot serialize more than 2 GB in one message
        return proto, int(opset_used)
    return proto.SerializeToString(), int(opset_used)


def _stage_external(proto: Any, path: Path) -> Path:
    """Write ``proto`` with its weights in ``<name>.data`` into a fresh hidden directory beside ``path``."""
    import tempfile

    import onnx

    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent if str(path.parent) else "."))
    except OSError as exc:
        raise GhostifyError(f"{path}: cannot write ({exc.strerror or exc})") from None
    onnx.save_model(proto, str(stage / path.name), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=1024)
    return stage / path.name


def _commit_external(staged: Path, path: Path) -> None:
    """Move the staged model and its ``.data`` file into place: the data first, the model last."""
    data_name = path.name + ".data"
    try:
        os.replace(staged.parent / data_name, path.parent / data_name)
        os.replace(staged, path)
    except OSError as exc:
        raise GhostifyError(f"{path}: cannot write ({exc.strerror or exc})") from None


def _torchscript_max_opset() -> int:
    try:
        from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
    except ImportError:  # a private constant: assume the torch 2.x value if it moves
        return 20
    return int(ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)


def _export_torchscript(model: nn.Module, x: torch.Tensor, opset: int | None, dynamic_batch: bool) -> tuple[bytes, int]:
    opset = 17 if opset is None else opset
    limit = _torchscript_max_opset()
    if opset > limit:  # checked here: torch would print its whole IR graph before failing
        raise GhostifyError(f"the TorchScript exporter writes opsets up to {limit}, not {opset}; "
                            "lower the opset or use the dynamo exporter", param="opset")
    buf = io.BytesIO()
    kwargs: dict[str, Any] = {}
    if dynamic_batch:
        kwargs["dynamic_axes"] = {"input": {0: "batch"}}
    with _quiet():
        torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=opset, input_names=["input"],
                          do_constant_folding=True, **kwargs)
    return buf.getvalue(), opset


def module_to_onnx(module: nn.Module, x: torch.Tensor) -> bytes:
    """One small module as ONNX bytes, unchecked (for timing a single layer).

    The TorchScript exporter first: it takes a fraction of a second on one layer, where dynamo
    takes seconds, and a table of a hundred layers adds that up.
    """
    try:
        return _export_torchscript(module, x, None, False)[0]
    except Exception:  # the TorchScript exporter is deprecated; dynamo is the fallback
        with _quiet():
            program = torch.onnx.export(module, (x,), dynamo=True, opset_version=18, verbose=False)
        return program.model_proto.SerializeToString()


def _example(input_size: Sequence[int], batch: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *[int(v) for v in input_size]), generator=gen)


@dataclass
class _Exported:
    """What an exporter produced: the serialized model, or a staged directory (external data)."""

    data: bytes
    opset: int
    exporter: str
    staged: Path | None = None  # a model over 2 GB, written with its weights beside it
    fallback_reason: str | None = None

    @property
    def source(self) -> bytes | Path:
        return self.staged if self.staged is not None else self.data

    @property
    def size(self) -> int:
        if self.staged is None:
            return len(self.data)
        return sum(f.stat().st_size for f in self.staged.parent.iterdir())

    def discard(self) -> None:
        if self.staged is not None:
            shutil.rmtree(self.staged.parent, ignore_errors=True)
            self.staged = None


def _validate(model: Any, input_size: Sequence[int], rtol: float, exporter: str) -> tuple[tuple[int, ...], float]:
    if exporter not in EXPORTERS:
        raise InvalidValueError("exporter", f"must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if not isinstance(model, nn.Module):
        raise GhostifyError(f"expected a torch.nn.Module, got {type(model).__name__}")
    size = tuple(int(v) for v in input_size)
    if not 2 <= len(size) <= 4:
        raise InvalidValueError("input_size", f"must be C,L, C,H,W or C,T,H,W, got {size}")
    if not float(rtol) > 0:
        raise InvalidValueError("rtol", f"must be > 0, got {rtol}")
    return size, float(rtol)


def _target(model: nn.Module, deploy: bool) -> tuple[nn.Module, list[str]]:
    """The module that is exported: the deployment form, or an eval-mode copy of the training form."""
    if not deploy:
        return copy.deepcopy(model).eval(), []
    from ghostify.export.deploy import DEPLOY_NOTES_ATTR
    from ghostify.export.deploy import deploy as to_deploy

    target = to_deploy(model)
    return target, list(getattr(target, DEPLOY_NOTES_ATTR, []))


class _Flat(nn.Module):
    """What the exporters see: one batch tensor in, a flat tuple of tensors out.

    A detector takes a list of images (fed here from the batch, image by image) and returns a
    list of dicts; a segmentation model returns a dict. ONNX has neither, so the outputs are the
    tensors in ``tree_leaves`` order, the order :func:`ghostify.forward.numpy_outputs` compares.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.images = input_convention(model) == IMAGES

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(list(x.unbind(0)) if self.images else x)
        return tuple(t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor))


def _exportable(target: nn.Module, output: Any) -> nn.Module:
    """``target`` itself when it takes and returns tensors, else wrapped in :class:`_Flat`."""
    if isinstance(output, torch.Tensor) and input_convention(target) != IMAGES:
        return target
    return _Flat(target).eval()


def _run_exporters(target: nn.Module, x: torch.Tensor, path: Path, opset: int | None, dynamic_batch: bool,
                   exporter: str) -> _Exported:
    """Dynamo first (unless told otherwise), TorchScript where it fails; onnxruntime must load the result."""
    fallback_reason = None
    if exporter in ("auto", "dynamo"):
        out: _Exported | None = None
        try:
            proto_or_bytes, used_opset = _export_dynamo(target, x, opset, dynamic_batch)
            if isinstance(proto_or_bytes, bytes):
                out = _Exported(proto_or_bytes, used_opset, "dynamo")
            else:
                out = _Exported(b"", used_opset, "dynamo", staged=_stage_external(proto_or_bytes, path))
            _session_or_raise(out.source)
            return out
        except Exception as exc:  # the dynamo exporter fails in many ways on unusual models
            if out is not None:
                out.discard()
            fallback_reason = first_line(exc, 300, with_type=True)
            if exporter == "dynamo":
                raise GhostifyError(f"dynamo ONNX export failed: {fallback_reason}") from exc
    try:
        data, used_opset = _export_torchscript(target, x, opset, dynamic_batch)
        _session_or_raise(data)
    except Exception as exc:
        why = f"dynamo: {fallback_reason}; " if fallback_reason else ""
        raise GhostifyError(f"ONNX export failed ({why}torchscript: {first_line(exc, 300, with_type=True)})") from exc
    return _Exported(data, used_opset, "torchscript", fallback_reason=fallback_reason)


def _parity(source: bytes | Path, model: nn.Module, input_size: Sequence[int], batches: Sequence[int],
            seed: int) -> tuple[float, float, int]:
    """(max abs, max rel) error of onnxruntime against torch over seeded inputs of each batch size,
    and how many output values were compared."""
    sess = onnx_session(source)
    name = sess.get_inputs()[0].name
    abs_err = rel_err = 0.0
    values = 0
    for b in batches:
        xb = _example(input_size, b, seed + b)
        reference = numpy_outputs(model, xb)
        a, r = relative_error(sess.run(None, {name: xb.numpy()}), reference)
        abs_err, rel_err = max(abs_err, a), max(rel_err, r)
        values += sum(int(y.size) for y in reference)
    return abs_err, rel_err, values


def _write(exported: _Exported, path: Path) -> None:
    if exported.staged is not None:
        _commit_external(exported.staged, path)
    else:
        atomic_write(path, exported.data)


def _refuse_unnamed_data_file(target: nn.Module, path: Path) -> None:
    data_file = path.parent / (path.name + ".data")
    if _over_two_gb(target) and data_file.exists() and not path.exists():  # never clobber an unnamed file
        raise GhostifyError(f"{data_file} exists (a model over 2 GB keeps its weights there); remove it or "
                            "choose another output path", param="path")


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: Sequence[int],
    *,
    opset: int | None = None,
    dynamic_batch: bool = False,
    deploy: bool = True,
    check: bool = True,
    rtol: float = DEFAULT_RTOL,
    exporter: str = "auto",
    keep_failed: bool = False,
    seed: int = 0,
) -> ExportResult:
    """Export ``model`` to ONNX at ``path`` and check it against torch with onnxruntime.

    Args:
        model: any ``nn.Module`` (original or ``ghostify.convert`` output); it is not modified.
        path: the ``.onnx`` file to write (overwritten: callers decide whether that is allowed).
        input_size: one example without the batch: (C, H, W), or (C, L) / (C, T, H, W) for 1-D / 3-D
            models. A detector's batch is fed as a list of images; outputs that are dicts or
            lists are exported as their tensors, in order.
        opset: ONNX opset (default: the exporter's; dynamo needs >= 18).
        dynamic_batch: make the batch dimension symbolic (checked at batch 1 and 3).
        deploy: export :func:`ghostify.deploy` (model) instead of the training form.
        check: run onnxruntime and torch on the same seeded input and compare.
        rtol: the largest ``max_rel_error`` that passes (see :mod:`ghostify.runtime.session`).
        exporter: "auto" (dynamo, TorchScript where dynamo fails), "dynamo" or "torchscript".
        keep_failed: write the file even when the parity check fails (otherwise it is not written).

    Returns an :class:`ExportResult`; it raises :class:`GhostifyError` only when no exporter works
    or the input size does not fit the model. A failed parity check is reported, not raised.
    """
    input_size, rtol = _validate(model, input_size, rtol, exporter)
    path = Path(path)
    start = time.perf_counter()
    exported: _Exported | None = None
    with eval_mode(model):
        try:
            output = check_forward(model, input_size)  # a wrong input size is the user's error: one clear line
            target, notes = _target(model, deploy)
            target = _exportable(target, output)
            _refuse_unnamed_data_file(target, path)
            batch = 2 if dynamic_batch else 1  # torch.export specialises a batch of 1
            exported = _run_exporters(target, _example(input_size, batch, seed), path, opset, dynamic_batch, exporter)
            batches = [1, 3] if dynamic_batch else [1]
            abs_err = rel_err = values = None
            if check:
                abs_err, rel_err, values = _parity(exported.source, model, input_size, batches, seed)
            passed = None if rel_err is None else bool(rel_err <= rtol)
            written = passed is not False or keep_failed
            size = exported.size
            if written:
                _write(exported, path)
        finally:
            if exported is not None:
                exported.discard()
    return ExportResult(path=path, exporter=exported.exporter, opset=exported.opset, input_size=input_size,
                        dynamic_batch=dynamic_batch, deployed=deploy, max_abs_error=abs_err,
                        max_rel_error=rel_err, rtol=rtol, passed=passed, written=written,
                        seconds=round(time.perf_counter() - start, 2), size_bytes=size,
                        fallback_reason=exported.fallback_reason, check_batches=batches if check else [],
                        deploy_notes=notes, compared_values=values)


def _session_or_raise(data: bytes | Path) -> None:
    """onnxruntime must be able to load what the exporter wrote (else try the other exporter)."""
    if isinstance(data, bytes) and len(data) > _TWO_GB:
        raise GhostifyError("the ONNX model is larger than 2 GB (protobuf limit); only the dynamo exporter "
                            "writes it (weights in OUT.onnx.data)")
    onnx_session(data, optimize=False)
