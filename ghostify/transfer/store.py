"""Where the calibration activations live during the one sequential walk: memory, then disk.

The walk carries every calibration input's activations forward, layer by layer, for two
models. That is the whole "frontier" of the network for N inputs: at ImageNet resolution it is
several GB. The store keeps it bounded whatever the model or resolution: values are held in
float16 when their range allows it (float16 keeps 11 significant bits: far below the fit's
error), and once ``memory_bytes`` are in use, further values go to files in a temporary
directory (read back on use, deleted when freed). Computation is always float32.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

__all__ = ["ActivationStore", "Stored"]

HALF_MAX = 3e4  # float16's largest finite value is 65504: leave headroom


@dataclass
class _OnDisk:
    path: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    numpy_dtype: Any


@dataclass
class Stored:
    """One chunk's value: its leaves (tensors in memory, files on disk, or plain Python values)."""

    leaves: list[Any]
    spec: Any
    nbytes: int = 0
    disk: list[str] = field(default_factory=list)


class ActivationStore:
    """Holds per-chunk values; ``put`` returns a handle, ``get`` gives the value back in float32."""

    def __init__(self, memory_bytes: int, half: bool = True, device: torch.device | str = "cpu") -> None:
        self.memory_bytes = int(memory_bytes)
        self.device = torch.device(device)  # where values are computed on; they are kept in host memory
        self.half = half
        self.in_memory = 0
        self.peak = 0
        self.spilled = 0  # bytes ever written to disk
        self._dir: str | None = None
        self._count = 0

    def put(self, value: Any) -> Stored:
        leaves, spec = tree_flatten(value)
        out = Stored(leaves=[], spec=spec)
        for leaf in leaves:
            out.leaves.append(self._keep(leaf, out) if isinstance(leaf, torch.Tensor) else leaf)
        self.in_memory += out.nbytes
        self.peak = max(self.peak, self.in_memory)
        return out

    def get(self, stored: Stored) -> Any:
        leaves = [self._load(leaf) for leaf in stored.leaves]
        return tree_unflatten(leaves, stored.spec)

    def free(self, stored: Stored) -> None:
        self.in_memory -= stored.nbytes
        stored.nbytes = 0
        for path in stored.disk:
            with contextlib.suppress(OSError):
                os.unlink(path)
        stored.leaves, stored.disk = [], []

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    # -- internals --------------------------------------------------------------------------
    def _keep(self, t: torch.Tensor, out: Stored) -> Any:
        t = t.detach().cpu()
        if self.half and t.dtype == torch.float32 and t.numel():
            low, high = torch.aminmax(t)  # one pass, no temporary
            if max(-float(low), float(high)) <= HALF_MAX:
                t = t.to(torch.float16)
        nbytes = t.numel() * t.element_size()
        if self.in_memory + out.nbytes + nbytes <= self.memory_bytes or t.numel() == 0:
            out.nbytes += nbytes
            return t.contiguous()
        return self._spill(t, out)

    def _spill(self, t: torch.Tensor, out: Stored) -> _OnDisk:
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="ghostify-transfer-")
        self._count += 1
        path = os.path.join(self._dir, f"{self._count}.bin")
        array = t.cpu().contiguous().numpy()
        array.tofile(path)
        self.spilled += array.nbytes
        out.disk.append(path)
        return _OnDisk(path, tuple(t.shape), t.dtype, array.dtype)

    def _load(self, leaf: Any) -> Any:
        if isinstance(leaf, _OnDisk):
            leaf = torch.from_numpy(np.fromfile(leaf.path, dtype=leaf.numpy_dtype).reshape(leaf.shape))
        if isinstance(leaf, torch.Tensor):
            leaf = leaf.to(self.device, non_blocking=True)
            return leaf.float() if leaf.dtype == torch.float16 else leaf
        return leaf
