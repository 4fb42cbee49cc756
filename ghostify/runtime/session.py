"""onnxruntime sessions and the parity metric: what every ONNX consumer in ghostify shares.

Torch-free (onnxruntime and numpy only), so that a deployment machine can time and check models.

Error definitions (over all outputs, flattened; ``a`` = the model under test, ``b`` = the
reference)::

    max_abs_error = max |a - b|
    max_rel_error = max |a - b| / max(max |b|, 1e-12)

i.e. the largest deviation relative to the largest reference magnitude of the output. An
element-wise relative error would blow up wherever a logit is near zero and says nothing about
whether the exported model computes the same function.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ghostify.errors import GhostifyError

__all__ = ["onnx_session", "relative_error", "EPS"]

EPS = 1e-12


def onnx_session(model: str | os.PathLike | bytes, threads: int | None = None, optimize: bool = True,
                 profile_prefix: str | None = None) -> Any:
    """An onnxruntime CPU session (ORT_ENABLE_ALL unless ``optimize`` is False), sequential execution."""
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


def relative_error(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> tuple[float, float]:
    """(max |a-b|, max |a-b| / max(max |b|, 1e-12)) over all outputs (see the module docstring)."""
    if len(a) != len(b):
        raise GhostifyError(f"the model under test returned {len(a)} outputs, the reference {len(b)}")
    abs_err, ref = 0.0, 0.0
    for x, y in zip(a, b, strict=True):
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if x.shape != y.shape:
            raise GhostifyError(f"output shape {x.shape} differs from the reference's {y.shape}")
        if x.size:
            abs_err = max(abs_err, float(np.max(np.abs(x - y))))
            ref = max(ref, float(np.max(np.abs(y))))
    return abs_err, abs_err / max(ref, EPS)
