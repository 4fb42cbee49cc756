"""Datasets as tensors. Fashion-MNIST comes from its IDX files (Debian: dataset-fashion-mnist).

Data specs (``fashion-mnist:DIR``, ``cifar10:DIR``, ``imagefolder:DIR``) are built on these
readers; nothing is ever downloaded.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import torch

from ghostify.errors import GhostifyError

__all__ = ["read_idx", "load_fashion_mnist", "FASHION_MNIST_DIR"]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

_IDX_DTYPES = {0x08: torch.uint8, 0x09: torch.int8, 0x0B: torch.int16, 0x0C: torch.int32,
               0x0D: torch.float32, 0x0E: torch.float64}


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an IDX file (optionally gzipped) into a tensor of its stored dtype and shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise GhostifyError(f"{path}: cannot read IDX file ({exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise GhostifyError(f"{path}: not an IDX file")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    if len(data) < 4 + 4 * ndim:
        raise GhostifyError(f"{path}: truncated IDX file (its header promises {ndim} dimensions)")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = bytearray(data[4 + 4 * ndim:])
    width = torch.empty((), dtype=dtype).element_size()
    if len(body) % width:
        raise GhostifyError(f"{path}: truncated IDX file ({len(body)} bytes of {width}-byte values)")
    tensor = torch.frombuffer(body, dtype=torch.uint8) if dtype == torch.uint8 else None
    if tensor is None:  # multi-byte IDX data is big-endian
        import numpy as np

        np_dtype = {torch.int8: ">i1", torch.int16: ">i2", torch.int32: ">i4", torch.float32: ">f4",
                    torch.float64: ">f8"}[dtype]
        tensor = torch.from_numpy(np.frombuffer(body, dtype=np_dtype).astype(np_dtype[1:]))
    expected = 1
    for v in shape:
        expected *= v
    if tensor.numel() != expected:
        raise GhostifyError(f"{path}: truncated IDX file ({tensor.numel()} values, header says {expected})")
    return tensor.reshape(shape)


def _find(root: Path, stem: str) -> Path:
    for name in (stem, f"{stem}.gz"):
        if (root / name).exists():
            return root / name
    raise GhostifyError(f"{root}: no {stem}[.gz] (install Fashion-MNIST: apt-get install -y dataset-fashion-mnist)")


def load_fashion_mnist(root: str | Path = FASHION_MNIST_DIR, train: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of the train or test split."""
    root = Path(root)
    prefix = "train" if train else "t10k"
    images = read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(root, f"{prefix}-labels-idx1-ubyte")).long()
    if images.shape[0] != labels.shape[0]:
        raise GhostifyError(f"{root}: {images.shape[0]} images but {labels.shape[0]} labels")
    return images, labels
