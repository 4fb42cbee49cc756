"""Deployment: the deployment form, ONNX export with a parity check."""

from __future__ import annotations

from ghostify.export.deploy import deploy
from ghostify.export.onnx import DEFAULT_RTOL, ExportResult, export_onnx

__all__ = ["export_onnx", "ExportResult", "deploy", "DEFAULT_RTOL"]
