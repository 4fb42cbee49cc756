"""Calibration inputs in the model's own format, as chunks of (args, kwargs) batches.

What a forward takes is the model's business: images (N, C, H, W), raw audio (N, samples),
spectrograms, sequences, or several inputs at once. Accepted:

* a tensor with the batch along dim 0: the forward's one argument;
* a tuple of such tensors: the forward's positional arguments (``model(a, b)``);
* a dict of such tensors: its keyword arguments (``model(x=..., mask=...)``);
* a DataLoader (or any iterable of batches): each item a batch in one of the forms above, or an
  ``(inputs, label, ...)`` tuple whose labels are ignored;
* a Dataset (or a list) of samples in those forms, without the batch dimension;
* a data spec string (``fashion-mnist:DIR``...; :mod:`ghostify.data.specs`), read as images.

Every tensor must be floating point, normalised as the model expects (data specs do that).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ghostify.errors import GhostifyError

__all__ = ["CalibrationBatch", "calibration_batches", "as_calibration_tensor"]


@dataclass
class CalibrationBatch:
    """One chunk of calibration inputs: ``model(*args, **kwargs)`` runs it."""

    args: tuple[torch.Tensor, ...]
    kwargs: dict[str, torch.Tensor]

    @property
    def size(self) -> int:
        first = self.args[0] if self.args else next(iter(self.kwargs.values()))
        return int(first.shape[0])

    def narrow(self, count: int) -> CalibrationBatch:
        return CalibrationBatch(tuple(a[:count] for a in self.args), {k: v[:count] for k, v in self.kwargs.items()})

    def split(self, size: int) -> list[CalibrationBatch]:
        n = self.size
        return [CalibrationBatch(tuple(a[i:i + size] for a in self.args), {k: v[i:i + size] for k, v in
                                                                           self.kwargs.items()})
                for i in range(0, n, size)]

    def shapes(self) -> str:
        parts = [str(tuple(a.shape)) for a in self.args] + [f"{k}={tuple(v.shape)}" for k, v in self.kwargs.items()]
        return ", ".join(parts)


def _batch_of(value: Any, label_tuples: bool) -> CalibrationBatch:
    """A batch from a tensor, a tuple of tensors (args), a dict (kwargs), or an (inputs, labels) item."""
    if isinstance(value, torch.Tensor):
        return _checked(CalibrationBatch((value,), {}))
    if isinstance(value, dict):
        return _checked(CalibrationBatch((), {str(k): v for k, v in value.items()}))
    if isinstance(value, (tuple, list)) and value:
        if label_tuples:  # an item of a data set: (inputs, label, ...); the labels are never read
            return _batch_of(value[0], label_tuples=False)
        return _checked(CalibrationBatch(tuple(value), {}))
    raise GhostifyError(f"calibration data must be tensors (or tuples/dicts of them), got {type(value).__name__}",
                        param="calibration_data")


def _checked(batch: CalibrationBatch) -> CalibrationBatch:
    tensors = list(batch.args) + list(batch.kwargs.values())
    if not tensors:
        raise GhostifyError("calibration data holds no tensor", param="calibration_data")
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            raise GhostifyError(f"calibration data must be tensors, got {type(t).__name__}", param="calibration_data")
        if not t.is_floating_point():
            raise GhostifyError(f"calibration data must be floating point, normalized as the model expects (got "
                                f"{t.dtype}); data specs do this for you", param="calibration_data")
        if t.dim() == 0 or t.shape[0] != tensors[0].shape[0]:
            raise GhostifyError("calibration tensors must share their batch size along dim 0, got shapes "
                                f"{[tuple(x.shape) for x in tensors]}", param="calibration_data")
    if tensors[0].shape[0] == 0:
        raise GhostifyError("calibration data is empty", param="calibration_data")
    return batch


def _batches(data: Any) -> Iterable[CalibrationBatch]:
    """Batches from any accepted form (see the module docstring), not yet cut to size."""
    if isinstance(data, str):
        from ghostify.data.specs import load_data

        return [_batch_of(load_data(data, train=True).images, label_tuples=False)]
    if isinstance(data, (torch.Tensor, dict)) or (isinstance(data, tuple) and data
                                                   and all(isinstance(t, torch.Tensor) for t in data)):
        return [_batch_of(data, label_tuples=False)]
    if isinstance(data, Dataset) or isinstance(data, list):
        # samples without the batch dimension: the default collate stacks them (and their labels)
        data = DataLoader(data, batch_size=64, shuffle=False)  # type: ignore[arg-type]
    if isinstance(data, Iterable):
        return (_batch_of(item, label_tuples=True) if not isinstance(item, torch.Tensor)
                else _batch_of(item, label_tuples=False) for item in data)
    raise GhostifyError(f"calibration data must be a tensor, a tuple or dict of tensors, a Dataset, a DataLoader or "
                        f"a data spec, got {type(data).__name__}", param="calibration_data")


def calibration_batches(data: Any, samples: int, chunk: int) -> Iterator[CalibrationBatch]:
    """At most ``samples`` inputs of ``data`` in batches of at most ``chunk``."""
    seen = 0
    try:
        for batch in _batches(data):
            for part in batch.split(chunk):
                take = min(part.size, samples - seen)
                yield part if take == part.size else part.narrow(take)
                seen += take
                if seen >= samples:
                    return
    except TypeError as exc:  # a collate or iteration failure on foreign data: the user's, in one line
        raise GhostifyError(f"calibration data cannot be read in batches ({exc})", param="calibration_data") from None
    if seen == 0:
        raise GhostifyError("calibration data is empty", param="calibration_data")


def as_calibration_tensor(data: Any, max_samples: int | None = None) -> torch.Tensor | None:
    """The calibration inputs of a one-argument forward as one tensor (None stays None)."""
    if data is None:
        return None
    parts = list(calibration_batches(data, max_samples or 2**62, 1 << 16))
    if parts[0].kwargs or len(parts[0].args) != 1:
        raise GhostifyError("calibration data for several inputs has no single tensor form", param="calibration_data")
    return torch.cat([p.args[0] for p in parts])
