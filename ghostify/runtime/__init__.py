"""Running exported models: onnxruntime sessions, parity, latency, the CPU they ran on.

Torch-free by design (onnxruntime and numpy only; torch is imported only by ``bench_torch``), so
``ghostify bench`` and ``ghostify check`` work on a deployment board without PyTorch.
"""

from ghostify.runtime.cpu import cpu_info, parse_cpuinfo
from ghostify.runtime.latency import (
           SCHEMA,
           TimedModel,
           bench_onnx,
           bench_torch,
           compare,
           percentiles,
           profile_onnx,
           time_onnx,
)
from ghostify.runtime.session import onnx_session, relative_error

__all__ = ["cpu_info", "parse_cpuinfo", "bench_onnx", "bench_torch", "time_onnx", "compare", "percentiles",
           "profile_onnx", "TimedModel", "SCHEMA", "onnx_session", "relative_error"]
