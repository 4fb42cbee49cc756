"""Every setting of transfer init in one object (like ``torch.ao``'s QConfig: the API stays thin)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ghostify.errors import InvalidValueError

__all__ = ["TransferConfig"]

GIB = 2**30
DATA_SAMPLES = 256
SYNTHETIC_SAMPLES = 32


@dataclass
class TransferConfig:
    """How ``init="transfer"`` fits the Ghost modules (docs/transfer.md measures each choice).

    Args:
        samples: the calibration set's size: at most this many inputs are read from the data
            given, or this many are distilled from BatchNorm statistics when there is none
            (default: 256 read, 32 distilled: distilling costs a backward pass per input and step).
        chunk: inputs per forward pass; memory for activations in flight scales with it.
        max_rows: spatial positions sampled per layer for the least-squares statistics (spread
            over all calibration inputs); the fit's cost grows with it, its quality saturates.
        pair_budget: multiply-adds allowed for one layer's pair statistics (rows x n^2 x taps):
            caps the rows of the widest layers (n = 2048: about 2,700), where every one of the
            n^2 pairs is fitted.
        refine_steps: Adam steps refining each module on its local reconstruction error after the
            closed-form fit (0: none); kept per layer only where it lowers that error.
        refine_seconds: the refinement's time budget for the whole model (None: no limit), shared
            out over the layers still to refine.
        refine_lr, refine_batch: the refinement's learning rate and mini-batch.
        refine_samples: calibration samples kept per layer for refining it.
        refine_crop: on maps at least twice this size, refine on interior crops of this many
            output positions per axis (exact for a convolution, and much cheaper; 0: whole maps).
        synthetic_steps: Adam steps distilling inputs from BatchNorm statistics (data-free).
        synthetic_size: spatial size of distilled inputs (None: the model's input size, reduced
            if needed to fit ``synthetic_seconds``).
        synthetic_seconds: time budget for distilling inputs (None: no limit): the steps, then
            the resolution (halved, down to 32 per axis) are reduced to fit it, measured on the
            machine that runs it.
        memory_bytes: activations kept in memory during the walk; beyond it they go to a
            temporary directory on disk, so memory stays bounded whatever the model or resolution.
        half_storage: keep stored activations in float16 where that is lossless enough (range
            below 3e4); they are computed in float32.
        seed: for the sampled positions, the refinement's mini-batches and distillation's noise.
    """

    samples: int | None = None
    chunk: int = 32
    max_rows: int = 8192
    pair_budget: float = 1e11
    refine_steps: int = 1000
    refine_seconds: float | None = 60.0
    refine_lr: float = 1e-3
    refine_batch: int = 32
    refine_samples: int = 256
    refine_crop: int = 24
    synthetic_steps: int = 200
    synthetic_size: Sequence[int] | None = None
    synthetic_seconds: float | None = 240.0
    memory_bytes: int = 2 * GIB
    half_storage: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("samples", "chunk", "max_rows", "refine_batch", "refine_samples"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise InvalidValueError(name, f"must be >= 1, got {getattr(self, name)}")
        if not self.pair_budget > 0:
            raise InvalidValueError("pair_budget", f"must be > 0, got {self.pair_budget}")
        for name in ("refine_steps", "synthetic_steps", "memory_bytes", "refine_crop"):
            if int(getattr(self, name)) < 0:
                raise InvalidValueError(name, f"must be >= 0, got {getattr(self, name)}")
        for name in ("refine_seconds", "synthetic_seconds"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise InvalidValueError(name, f"must be > 0, got {value}")
        if self.synthetic_size is not None:
            self.synthetic_size = tuple(int(v) for v in self.synthetic_size)
            if not self.synthetic_size or min(self.synthetic_size) < 1:
                raise InvalidValueError("synthetic_size", f"must be positive sizes, got {self.synthetic_size}")

    def calibration_samples(self, synthetic: bool) -> int:
        """How many inputs to read (or, ``synthetic``, to distil)."""
        return self.samples if self.samples is not None else (SYNTHETIC_SAMPLES if synthetic else DATA_SAMPLES)

    def rows_per_sample(self, n: int, taps: int, samples: int) -> int:
        """Positions to sample per calibration input for a layer of n maps and a cheap kernel of ``taps``."""
        rows = min(self.max_rows, int(self.pair_budget / (n * n * taps)))
        return max(1, -(-max(rows, 1) // max(samples, 1)))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.synthetic_size is not None:
            data["synthetic_size"] = list(self.synthetic_size)
        return data
