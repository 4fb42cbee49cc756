"""Static int8 quantization of an exported ONNX model, through onnxruntime's own tooling.

Nothing here quantizes a tensor itself: :func:`quantize_onnx` runs onnxruntime's pre-processing
(``quant_pre_process``: shape inference, basic graph optimization) and then
``quantize_static`` in QDQ format, with the settings measured in ``bench/int8.py``
(docs/deploy.md, "int8"):

* weights int8, per output channel; activations uint8 (int8 activations ran slower than fp32 on
  x86: onnxruntime's fast u8s8 kernels want unsigned activations);
* calibration MinMax over 256 inputs (Entropy and Percentile gave the same agreement);
* the logits stay float (no QuantizeLinear after the final Gemm/MatMul): quantizing them adds
  error and saves nothing;
* ``keep_float``: GLOBs matched against node names and the torch module names the dynamo
  exporter stores in each node's metadata. The default keeps nothing in float.

Quantization cannot meet the fp32 parity tolerance, so :func:`int8_check` replaces it: on
held-out inputs (the samples after the calibration ones), the top-1 agreement with the fp32
torch model, the relative error of the outputs (``mean|a-b| / mean|b|``) and, with labels, the
accuracy drop in percentage points.
"""

from __future__ import annotations

import ast
import fnmatch
import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ghostify.data.calibration import DATA_SAMPLES
from ghostify.errors import GhostifyError, InvalidValueError, QuantizationError
from ghostify.forward import numpy_outputs
from ghostify.runtime.session import EPS, onnx_session
from ghostify.utils import first_line

__all__ = ["QuantizeConfig", "Int8Check", "quantize_onnx", "int8_check", "split_data", "keep_float_nodes",
           "describe", "CALIBRATION_METHODS", "MIN_CALIBRATION_SAMPLES", "NAME_SCOPES_KEY"]

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
MIN_CALIBRATION_SAMPLES = 16  # fewer only when asked for explicitly: too few to trust a range
NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"  # the dynamo exporter's module path of each node
_LOGIT_OPS = ("Gemm", "MatMul")


@dataclass
class QuantizeConfig:
    """How ``export_onnx(..., quantize=QuantizeConfig(...))`` quantizes and checks the model.

    calibration_data: inputs ``(N, *input_size)`` (tensor or array), or a pair ``(inputs,
        labels)``; the first ``calibration_samples`` calibrate, the next ``check_samples`` check.
    check_data: held-out inputs (or ``(inputs, labels)``) for the check instead of the rest of
        ``calibration_data``.
    calibration_samples: inputs to calibrate on; fewer than 16 only when set explicitly.
    method: the calibration method, one of ``CALIBRATION_METHODS``.
    per_channel: one weight scale per output channel (else per tensor).
    reduce_range: 7-bit weights, so that uint8 x int8 products cannot saturate the 16-bit
        accumulators of x86 kernels without VNNI (None: on when this CPU is such a one, where the
        check runs; see :func:`needs_reduce_range`).
    keep_float: GLOBs of nodes (node names, or torch module names) left in float.
    max_rel_error: the largest ``mean|int8-fp32| / mean|fp32|`` of the outputs that passes.
    min_agreement: the smallest top-1 agreement with the fp32 model that passes, in percent.
    deploy_config: the deployment form for int8 (None: :data:`INT8_DEPLOY`).
    """

    calibration_data: Any
    check_data: Any = None
    calibration_samples: int | None = None  # None: 256
    check_samples: int = 256
    method: str = "minmax"
    per_channel: bool = True
    reduce_range: bool | None = None
    keep_float: Sequence[str] = ()
    max_rel_error: float = 0.05
    min_agreement: float = 98.0
    deploy_config: Any = None

    def validate(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise InvalidValueError("method", f"must be one of {', '.join(CALIBRATION_METHODS)}, got {self.method!r}")
        if self.calibration_samples is not None and self.calibration_samples < 1:
            raise InvalidValueError("calibration_samples", f"must be >= 1, got {self.calibration_samples}")
        if self.check_samples < 1:
            raise InvalidValueError("check_samples", f"must be >= 1, got {self.check_samples}")
        if not self.max_rel_error > 0:
            raise InvalidValueError("max_rel_error", f"must be > 0, got {self.max_rel_error}")
        if not 0 <= self.min_agreement <= 100:
            raise InvalidValueError("min_agreement", f"must be a percentage (0-100), got {self.min_agreement}")


@dataclass
class Int8Check:
    """What the int8 check measured; ``passed`` is None when it did not run."""

    agreement: float | None  # top-1 agreement with the fp32 model, percent (None: not a classifier)
    rel_error: float | None  # mean|int8 - fp32| / mean|fp32| over all outputs
    accuracy_fp32: float | None = None  # percent, with labels
    accuracy_int8: float | None = None
    accuracy_drop: float | None = None  # percentage points, fp32 - int8
    check_samples: int = 0
    check_inputs: str = "held-out"  # or "calibration" when no held-out input was left
    passed: bool | None = None
    failures: list[str] = field(default_factory=list)


# -- data --------------------------------------------------------------------------------------

def _as_pair(data: Any) -> tuple[np.ndarray, np.ndarray | None]:
    labels = None
    if isinstance(data, (tuple, list)):
        if len(data) != 2:
            raise GhostifyError(f"int8 calibration data must be inputs or (inputs, labels), got {len(data)} items",
                                param="calibration_data")
        data, labels = data
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().float().numpy()
    if not isinstance(data, np.ndarray):
        raise GhostifyError(f"int8 calibration data must be one tensor of inputs, got {type(data).__name__} (a "
                            "model with several inputs cannot be quantized here)", param="calibration_data")
    if labels is not None:
        labels = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        if labels.shape[:1] != data.shape[:1]:
            raise GhostifyError(f"{data.shape[0]} inputs but {labels.shape[0]} labels", param="calibration_data")
    return data.astype(np.float32, copy=False), labels


def _finite(x: np.ndarray, what: str) -> None:
    bad = int(x.size - np.count_nonzero(np.isfinite(x)))
    if bad:  # one Inf stretches a MinMax range until every other value rounds to zero
        raise GhostifyError(f"the {what} hold {bad} non-finite values (Inf or NaN); int8 ranges calibrated on "
                            "them are meaningless", param="calibration_data")


@dataclass
class _Data:
    calib: np.ndarray
    check: np.ndarray
    labels: np.ndarray | None
    check_inputs: str
    notes: list[str]


def split_data(config: QuantizeConfig, input_size: Sequence[int]) -> _Data:
    """The calibration inputs, the check inputs (held out when there are any) and their labels."""
    x, labels = _as_pair(config.calibration_data)
    size = tuple(int(v) for v in input_size)
    if tuple(x.shape[1:]) != size:
        raise GhostifyError(f"int8 calibration inputs have shape {tuple(x.shape[1:])} per sample, the model takes "
                            f"{size}", param="calibration_data")
    asked = config.calibration_samples
    n = min(asked or DATA_SAMPLES, x.shape[0])
    if n < MIN_CALIBRATION_SAMPLES and (asked is None or asked > n):
        raise GhostifyError(f"only {n} calibration inputs; int8 calibration needs >= {MIN_CALIBRATION_SAMPLES} "
                            "(ask for fewer explicitly to run anyway)", param="calibration_samples")
    notes = [f"calibrated on {n} inputs only: the ranges may not hold"] if n < MIN_CALIBRATION_SAMPLES else []
    calib = x[:n]
    _finite(calib, "calibration inputs")
    if config.check_data is not None:
        check, check_labels = _as_pair(config.check_data)
        source = "held-out"
        if tuple(check.shape[1:]) != size:
            raise GhostifyError(f"int8 check inputs have shape {tuple(check.shape[1:])} per sample, the model takes "
                                f"{size}", param="check_data")
    elif x.shape[0] > n:
        check, check_labels, source = x[n:], None if labels is None else labels[n:], "held-out"
    else:
        check, check_labels, source = calib, None if labels is None else labels[:n], "calibration"
        notes.append("no input was left after the calibration inputs: the int8 check ran on those")
    check = check[:config.check_samples]
    check_labels = None if check_labels is None else check_labels[:config.check_samples]
    _finite(check, "check inputs")
    return _Data(calib, check, check_labels, source, notes)


# -- which nodes stay float --------------------------------------------------------------------

def _node_names(node: Any) -> list[str]:
    """A node's own name and the torch module names it came from (dynamo metadata)."""
    names = [node.name]
    for prop in node.metadata_props:
        if prop.key == NAME_SCOPES_KEY:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                continue
            # deployment-form modules are named "<module>__deployK": the module's name matches too
            names += [s for s in scopes if s] + [str(s).rsplit("__deploy", 1)[0] for s in scopes if "__deploy" in s]
    return names


def keep_float_nodes(proto: Any, patterns: Sequence[str]) -> list[str]:
    """Names of the nodes any GLOB in ``patterns`` matches ("." and "_" match alike in module names)."""
    if not patterns:
        return []
    pats = [p.replace(".", "_") for p in patterns]
    kept = []
    for node in proto.graph.node:
        names = [n.replace(".", "_") for n in _node_names(node)]
        if any(fnmatch.fnmatchcase(n, p) for n in names for p in pats):
            kept.append(node.name)
    return kept


# -- quantization ------------------------------------------------------------------------------

class _Reader:
    """onnxruntime's CalibrationDataReader protocol over an array, one sample a run."""

    def __init__(self, name: str, x: np.ndarray) -> None:
        self.name, self.x, self.i = name, x, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= self.x.shape[0]:
            return None
        self.i += 1
        return {self.name: self.x[self.i - 1:self.i]}

    def rewind(self) -> None:
        self.i = 0


def _node_in_traceback(exc: BaseException, proto: Any) -> Any:
    """The graph node the innermost frame of onnxruntime's quantizer was working on, if any.

    Its messages rarely name the node ("operands could not be broadcast"), but its frames hold
    the node, or the weight or bias tensor, they were quantizing.
    """
    by_name = {n.name: n for n in proto.graph.node if n.name}
    consumer: dict[str, Any] = {}
    for n in proto.graph.node:
        for t in n.input:
            consumer.setdefault(t, n)
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):  # innermost first: an outer loop variable may be stale
        for value in frame.f_locals.values():
            name = getattr(value, "name", None) if hasattr(value, "op_type") else value
            if isinstance(name, str) and name in by_name:
                return by_name[name]
            if isinstance(name, str) and name in consumer:
                return consumer[name]
    return None


def _raise_for_node(exc: Exception, proto: Any, stage: str) -> QuantizationError:
    """One line naming the node an onnxruntime quantization error is about: by its name in the
    message, else from the quantizer's frames."""
    text = str(exc)
    hits = [n for n in proto.graph.node if n.name and n.name in text]
    node = max(hits, key=lambda n: len(n.name)) if hits else _node_in_traceback(exc, proto)
    if node is None:
        return QuantizationError(f"int8 quantization failed in {stage}: {first_line(exc, 300, with_type=True)}")
    module = next((s for s in _node_names(node)[1:]), None)
    where = f"node {node.name} ({node.op_type}" + (f", module {module})" if module else ")")
    return QuantizationError(f"int8 quantization failed at {where} in {stage}: {first_line(exc, 240, with_type=True)}",
                             node=node.name, keep=module or node.name)


def _output_ops(proto: Any) -> list[str]:
    """The logit op types to leave unquantized: those producing a graph output."""
    outputs = {o.name for o in proto.graph.output}
    return sorted({n.op_type for n in proto.graph.node if n.op_type in _LOGIT_OPS and set(n.output) & outputs})


def _preprocess(src: Path, dst: Path, proto: Any) -> None:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst))
    except Exception as exc:  # onnxruntime's shape inference raises many types
        raise _raise_for_node(exc, proto, "pre-processing (shape inference)") from exc


def needs_reduce_range(isa: Sequence[str] | None = None) -> bool:
    """True on x86 without VNNI: there onnxruntime's uint8 x int8 kernels (AVX2/AVX-512 pmaddubsw) add
    pairs of products in 16 bits, which full-range weights can saturate."""
    if isa is None:
        from ghostify.runtime.cpu import cpu_info

        info = cpu_info()
        if info.get("arch") not in ("x86_64", "AMD64", "i686"):
            return False
        isa = info.get("isa", [])
    return not any(flag in isa for flag in ("avx512_vnni", "avx_vnni"))


def resolved_reduce_range(config: QuantizeConfig) -> bool:
    return needs_reduce_range() if config.reduce_range is None else config.reduce_range


def quantize_onnx(source: bytes | str | Path, calib: np.ndarray, config: QuantizeConfig) -> tuple[bytes, list[str]]:
    """The int8 QDQ model (serialized) of the fp32 ONNX ``source``, and the nodes kept in float."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    proto = onnx.load_from_string(source) if isinstance(source, bytes) else onnx.load(str(source))
    with tempfile.TemporaryDirectory(prefix="ghostify-int8-") as tmp:
        fp32, pre, out = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        fp32.write_bytes(source if isinstance(source, bytes) else Path(source).read_bytes())
        _preprocess(fp32, pre, proto)
        pre_proto = onnx.load(str(pre))
        kept = keep_float_nodes(pre_proto, config.keep_float)
        reader = _Reader(pre_proto.graph.input[0].name, calib)
        quiet = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # the quantizer logs warnings at the root logger
        try:
            quantize_static(str(pre), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=config.per_channel,
                            reduce_range=resolved_reduce_range(config),
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=methods[config.method], nodes_to_exclude=kept,
                            extra_options={"OpTypesToExcludeOutputQuantization": _output_ops(pre_proto)})
        except Exception as exc:  # the quantizer raises ValueError, RuntimeError, onnx errors, ...
            raise _raise_for_node(exc, pre_proto, "quantize_static") from exc
        finally:
            logging.getLogger().setLevel(quiet)
        data = out.read_bytes()
    try:
        onnx_session(data, optimize=False)
    except Exception as exc:  # onnxruntime's own exception types
        raise _raise_for_node(exc, pre_proto, "loading the int8 model") from exc
    return data, kept


# -- the check ---------------------------------------------------------------------------------

def _outputs(sess: Any, model: nn.Module, x: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(int8 outputs, fp32 torch outputs) over ``x``, each output concatenated over the samples."""
    name = sess.get_inputs()[0].name
    got = [sess.run(None, {name: x[i:i + 1]}) for i in range(x.shape[0])]
    ref = [numpy_outputs(model, torch.from_numpy(x[i:i + 32])) for i in range(0, x.shape[0], 32)]
    cat = lambda rows: [np.concatenate([r[k] for r in rows]) for k in range(len(rows[0]))]  # noqa: E731
    return cat(got), cat(ref)


def _rel_mean(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    diff = sum(float(np.abs(x.astype(np.float64) - y).sum()) for x, y in zip(a, b, strict=True))
    size = sum(y.size for y in b)
    return diff / size / max(sum(float(np.abs(y.astype(np.float64)).sum()) for y in b) / size, EPS)


def int8_check(int8: bytes | str | Path, model: nn.Module, x: np.ndarray, labels: np.ndarray | None,
               config: QuantizeConfig, check_inputs: str = "held-out") -> Int8Check:
    """Compare the int8 model with the fp32 torch ``model`` on ``x`` and gate the figures."""
    got, ref = _outputs(onnx_session(int8), model, x)
    check = Int8Check(agreement=None, rel_error=_rel_mean(got, ref), check_samples=int(x.shape[0]),
                      check_inputs=check_inputs)
    logits = ref[0]
    if logits.ndim == 2 and logits.shape[1] > 1:  # a classifier: top-1 is defined
        top_ref, top_got = logits.argmax(1), got[0].argmax(1)
        check.agreement = round(100.0 * float(np.mean(top_ref == top_got)), 2)
        if labels is not None and labels.size and labels.min() >= 0:
            check.accuracy_fp32 = round(100.0 * float(np.mean(top_ref == labels)), 2)
            check.accuracy_int8 = round(100.0 * float(np.mean(top_got == labels)), 2)
            check.accuracy_drop = round(check.accuracy_fp32 - check.accuracy_int8, 2)
    if not math.isfinite(check.rel_error) or check.rel_error > config.max_rel_error:
        check.failures.append(f"relative error {check.rel_error:.4f} > {config.max_rel_error:g}")
    if check.agreement is not None and check.agreement < config.min_agreement:
        check.failures.append(f"top-1 agreement {check.agreement:.2f}% < {config.min_agreement:g}%")
    check.rel_error = round(check.rel_error, 6)
    check.passed = not check.failures
    return check


def describe(config: QuantizeConfig, kept: list[str], n_calib: int, seconds: float) -> dict[str, Any]:
    """The settings the JSON records next to the check's figures."""
    return {"calib_samples": n_calib, "method": config.method, "per_channel": config.per_channel,
            "reduce_range": resolved_reduce_range(config), "weights": "int8", "activations": "uint8",
            "format": "QDQ", "keep_float": list(config.keep_float),
            "kept_float_nodes": kept, "max_rel_error": config.max_rel_error, "min_agreement": config.min_agreement,
            "quantize_seconds": round(seconds, 2)}

