"""Where calibration inputs come from, named by one string: a data spec, a tensor file, or "synthetic".

``resolve_calibration`` turns that string into what ``ghostify.convert`` takes: the inputs
themselves (preprocessed as the model expects), or ``None`` with ``synthetic=True`` for inputs
distilled from the model's BatchNorm statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from ghostify.data.specs import DATA_KINDS, load_data
from ghostify.data.tensors import is_tensor_file, load_tensor_file
from ghostify.errors import GhostifyError, InvalidValueError

__all__ = ["Calibration", "resolve_calibration", "SYNTHETIC", "DATA_SAMPLES"]

SYNTHETIC = "synthetic"
DATA_SAMPLES = 256  # the transfer default too (ghostify.transfer.config)


@dataclass
class Calibration:
    data: Any  # inputs for ghostify.convert(calibration_data=...), or None
    synthetic: bool  # no data: distil inputs from BatchNorm statistics
    description: str  # in words, for the report ("256 images from fashion-mnist:...")
    labels: Any = None  # the labels of a labelled data spec's images (never read by transfer)


def resolve_calibration(spec: str, model: nn.Module, input_size: Sequence[int], samples: int | None) -> Calibration:
    """The calibration set ``spec`` names, at most ``samples`` inputs (None: 256; distilled: the
    transfer default), for ``model`` at ``input_size``."""
    if samples is not None and samples < 1:
        raise InvalidValueError("calibration_samples", f"must be >= 1, got {samples}")
    if spec == SYNTHETIC:
        return Calibration(None, True, "inputs distilled from the model's BatchNorm statistics")
    samples = samples or DATA_SAMPLES
    if is_tensor_file(spec):
        data = load_tensor_file(spec)
        return Calibration(data, False, f"tensors from {spec}")
    if spec.partition(":")[0].strip().lower().replace("_", "-") in (*DATA_KINDS, "fmnist", "fashionmnist"):
        batch = load_data(spec, train=True, model=model, input_size=input_size, max_samples=samples)
        return Calibration(batch.images, False, f"{batch.images.shape[0]} images from {spec}", batch.labels)
    kinds = ", ".join(f"{k}:DIR" for k in DATA_KINDS)
    raise GhostifyError(f"cannot read calibration data {spec!r}: give a data spec ({kinds}), a tensor file "
                        f"(.safetensors, .npy, .pt) or '{SYNTHETIC}'", param="calibration_data")
