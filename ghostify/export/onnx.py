"""ONNX export with a parity check: the same path for original and converted models.

``export_onnx`` (1) optionally turns the model into its deployment form (:func:`ghostify.deploy`:
BN folded, concat-free Ghost modules, ...), (2) exports it with the exporter torch recommends
today (``torch.onnx.export(..., dynamo=True)``) and falls back to the TorchScript exporter where
that fails, (3) runs the ONNX file with onnxruntime (CPU, ORT_ENABLE_ALL, as deployed) and the
*given* torch model (eval mode) on the same seeded input, and reports the error, and (4) writes
the file through a temporary file renamed into place.

Error definitions (over all outputs, flattened; ``a`` = onnxruntime, ``b`` = torch)::

    max_abs_error = max |a - b|
    max_rel_error = max |a - b| / max(max |b|, 1e-12)

i.e. the largest deviation relative to the largest reference magnitude of the output. An
element-wise relative error would blow up wherever a logit is near zero and says nothing about
whether the exported model computes the same function.
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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ghostify.errors import GhostifyError

__all__ = ["ExportResult", "export_onnx", "onnx_session", "torch_outputs", "DEFAULT_RTOL", "relative_error"]

DEFAULT_RTOL = 1e-4
_EPS = 1e-12
_TWO_GB = 2**31 - 1


@dataclass
class ExportResult:
    """What ``export_onnx`` did. ``passed`` is None when the parity check was skipped."""

    path: Path
    exporter: str  # "dynamo" or "torchscript"
    opset: int
    input_size: tuple[int, int, int]
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

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        data["input_size"] = list(self.input_size)
        return data


def relative_error(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> tuple[float, float]:
    """(max |a-b|, max |a-b| / max(max |b|, 1e-12)) over all outputs (see the module docstring)."""
    if len(a) != len(b):
        raise GhostifyError(f"onnxruntime returned {len(a)} outputs, torch {len(b)}")
    abs_err, ref = 0.0, 0.0
    for x, y in zip(a, b, strict=True):
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if x.shape != y.shape:
            raise GhostifyError(f"onnxruntime output shape {x.shape} differs from torch {y.shape}")
        if x.size:
            abs_err = max(abs_err, float(np.max(np.abs(x - y))))
            ref = max(ref, float(np.max(np.abs(y))))
    return abs_err, abs_err / max(ref, _EPS)


def torch_outputs(model: nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    """Run ``model`` in eval mode without grad; return its tensor outputs (flattened) as numpy."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        model.train(was_training)
    leaves = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
    if not leaves:
        raise GhostifyError(f"the model returned {type(out).__name__}, no tensor: nothing to export or compare")
    return [t.detach().cpu().float().numpy() for t in leaves]


def onnx_session(model: str | os.PathLike | bytes, threads: int | None = None, optimize: bool = True,
                 profile_prefix: str | None = None) -> Any:
    """An onnxruntime CPU session (ORT_ENABLE_ALL unless ``optimize`` is False)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if threads is not None:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, sess_options=so, providers=["CPUExecutionProvider"])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"


@contextlib.contextmanager
def _quiet():
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
                            "lower --opset or use --exporter dynamo")
    buf = io.BytesIO()
    kwargs: dict[str, Any] = {}
    if dynamic_batch:
        kwargs["dynamic_axes"] = {"input": {0: "batch"}}
    with _quiet():
        torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=opset, input_names=["input"],
                          do_constant_folding=True, **kwargs)
    return buf.getvalue(), opset


def _example(input_size: Sequence[int], batch: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *[int(v) for v in input_size]), generator=gen)


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
        path: the ``.onnx`` file to write (overwritten: callers decide about ``--force``).
        input_size: (C, H, W) of one example.
        opset: ONNX opset (default: the exporter's; dynamo needs >= 18).
        dynamic_batch: make the batch dimension symbolic (checked at batch 1 and 3).
        deploy: export :func:`ghostify.deploy` (model) instead of the training form.
        check: run onnxruntime and torch on the same seeded input and compare.
        rtol: the largest ``max_rel_error`` that passes (see the module docstring).
        exporter: "auto" (dynamo, TorchScript where dynamo fails), "dynamo" or "torchscript".
        keep_failed: write the file even when the parity check fails (otherwise it is not written).

    Returns an :class:`ExportResult`; it raises :class:`GhostifyError` only when no exporter works
    or the input size does not fit the model. A failed parity check is reported, not raised.
    """
    from ghostify.io.archive import atomic_write
    from ghostify.report.report import check_forward

    if exporter not in ("auto", "dynamo", "torchscript"):
        raise GhostifyError(f"exporter must be auto, dynamo or torchscript, got {exporter!r}")
    if not isinstance(model, nn.Module):
        raise GhostifyError(f"expected a torch.nn.Module, got {type(model).__name__}")
    input_size = tuple(int(v) for v in input_size)
    if len(input_size) != 3:
        raise GhostifyError(f"input size must be C,H,W, got {input_size}")
    rtol = float(rtol)
    if not rtol > 0:
        raise GhostifyError(f"rtol must be > 0, got {rtol}")
    path = Path(path)
    start = time.perf_counter()

    was_training = model.training
    model.eval()
    staged: Path | None = None  # a model over 2 GB, written with external data beside ``path``
    try:
        check_forward(model, input_size)  # a wrong --input-size is the user's error: one clear line
        notes: list[str] = []
        if deploy:
            from ghostify.export.deploy import deploy as to_deploy

            target = to_deploy(model)
            notes = list(getattr(target, "ghostify_deploy_notes", []))
        else:
            target = copy.deepcopy(model).eval()
        batch = 2 if dynamic_batch else 1  # torch.export specialises a batch of 1
        x = _example(input_size, batch, seed)

        data_file = path.parent / (path.name + ".data")
        if _over_two_gb(target) and data_file.exists() and not path.exists():  # never clobber an unnamed file
            raise GhostifyError(f"{data_file} exists (a model over 2 GB keeps its weights there); remove it or "
                                "choose another output path")
        data = opset_used = None
        used = None
        fallback_reason = None
        if exporter in ("auto", "dynamo"):
            try:
                data, opset_used = _export_dynamo(target, x, opset, dynamic_batch)
                if not isinstance(data, bytes):
                    staged = _stage_external(data, path)
                    data = b""
                _session_or_raise(staged if staged is not None else data)
                used = "dynamo"
            except Exception as exc:  # the dynamo exporter fails in many ways on unusual models
                if staged is not None:
                    shutil.rmtree(staged.parent, ignore_errors=True)
                    staged = None
                fallback_reason = _first_line(exc)
                if exporter == "dynamo":
                    raise GhostifyError(f"dynamo ONNX export failed: {fallback_reason}") from exc
        if used is None:
            try:
                data, opset_used = _export_torchscript(target, x, opset, dynamic_batch)
                _session_or_raise(data)
                used = "torchscript"
            except Exception as exc:
                why = f"dynamo: {fallback_reason}; " if fallback_reason else ""
                raise GhostifyError(f"ONNX export failed ({why}torchscript: {_first_line(exc)})") from exc
        assert data is not None and opset_used is not None

        abs_err = rel_err = None
        passed = None
        batches: list[int] = []
        if check:
            sess = onnx_session(staged if staged is not None else data)
            name = sess.get_inputs()[0].name
            abs_err, rel_err = 0.0, 0.0
            for b in ([1, 3] if dynamic_batch else [1]):
                xb = _example(input_size, b, seed + b)
                ref = torch_outputs(model, xb)
                got = sess.run(None, {name: xb.numpy()})
                a, r = relative_error(got, ref)
                abs_err, rel_err = max(abs_err, a), max(rel_err, r)
                batches.append(b)
            passed = bool(rel_err <= rtol)
        written = passed is not False or keep_failed
        size = len(data) if staged is None else sum(f.stat().st_size for f in staged.parent.iterdir())
        if written:
            if staged is not None:
                _commit_external(staged, path)
            else:
                atomic_write(path, data)
    finally:
        model.train(was_training)
        if staged is not None:
            shutil.rmtree(staged.parent, ignore_errors=True)
    return ExportResult(path=path, exporter=used, opset=opset_used, input_size=input_size,
                        dynamic_batch=dynamic_batch, deployed=deploy, max_abs_error=abs_err,
                        max_rel_error=rel_err, rtol=rtol, passed=passed, written=written,
                        seconds=round(time.perf_counter() - start, 2), size_bytes=size,
                        fallback_reason=fallback_reason, check_batches=batches, deploy_notes=notes)


def _session_or_raise(data: bytes | Path) -> None:
    """onnxruntime must be able to load what the exporter wrote (else try the other exporter)."""
    if isinstance(data, bytes) and len(data) > _TWO_GB:
        raise GhostifyError("the ONNX model is larger than 2 GB (protobuf limit); only the dynamo exporter "
                            "writes it (weights in OUT.data)")
    onnx_session(data, optimize=False)
