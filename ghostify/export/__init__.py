"""Deployment: the deployment form, ONNX export with a parity check, static int8 quantization."""

from __future__ import annotations

from ghostify.export.deploy import deploy
from ghostify.export.onnx import DEFAULT_RTOL, ExportResult, export_onnx
from ghostify.export.quantize import QuantizeConfig

__all__ = ["export_onnx", "ExportResult", "deploy", "DEFAULT_RTOL", "QuantizeConfig"]
