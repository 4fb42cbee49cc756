"""Data specs: fashion-mnist:DIR, cifar10:DIR, imagefolder:DIR and tensors, with preprocessing."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from ghostify.data.specs import load_data, open_data, preprocess_for
from ghostify.errors import GhostifyError


def _write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fmnist_dir(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 20)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))
    return tmp_path


def test_fashion_mnist_grayscale_to_three_channels_resized_and_normalized(fmnist_dir):
    batch = load_data(f"fashion-mnist:{fmnist_dir}", train=True, input_size=(3, 32, 32), mean=(0.5,), std=(0.25,))
    assert batch.images.shape == (40, 3, 32, 32)
    assert torch.equal(batch.images[:, 0], batch.images[:, 2])  # grayscale copied to 3 channels
    assert batch.labels is not None and batch.labels.shape == (40,)
    assert -2.01 <= float(batch.images.min()) and float(batch.images.max()) <= 2.01  # (x - .5) / .25, x in [0, 1]
    test = open_data(f"fashion-mnist:{fmnist_dir}", train=False)
    assert len(test) == 20 and test.has_labels
    # default normalization: the data set's own statistics; the model's input size when given
    x, y = test[0]
    assert x.shape == (1, 28, 28) and isinstance(y, int)
    sub = load_data(f"fashion-mnist:{fmnist_dir}", max_samples=7)
    assert sub.images.shape[0] == 7


def test_cifar10_batches_are_read_without_running_code(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", 4) for i in range(1, 6)] + [("test_batch", 6)]:
        obj = {b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8), b"labels": list(rng.integers(0, 10, n))}
        (tmp_path / name).write_bytes(pickle.dumps({k: (v if k == b"data" else [int(t) for t in v])
                                                    for k, v in obj.items()}))
    data = open_data(f"cifar10:{tmp_path}", train=True)
    assert len(data) == 20 and data.num_classes == 10
    x, _ = data[3]
    assert x.shape == (3, 32, 32)
    gray = load_data(f"cifar10:{tmp_path}", train=False, input_size=(1, 16, 16))
    assert gray.images.shape == (6, 1, 16, 16)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(GhostifyError, match="refusing"):
        open_data(f"cifar10:{tmp_path}", train=False)


def test_imagefolder_with_classes_and_unlabeled(tmp_path):
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((10, 12, 3), 40 * i, dtype=np.uint8)).save(tmp_path / "train" / cls / f"{i}.png")
    data = open_data(f"imagefolder:{tmp_path}", train=True, input_size=(3, 8, 8))
    assert data.classes == ["cat", "dog"] and len(data) == 6
    x, y = data[4]
    assert x.shape == (3, 8, 8) and y == 1
    with pytest.raises(GhostifyError, match="no val"):
        open_data(f"imagefolder:{tmp_path}", train=False)
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(np.zeros((5, 5), dtype=np.uint8)).save(flat / "a.png")
    batch = load_data(f"imagefolder:{flat}", input_size=(3, 5, 5))
    assert batch.images.shape == (1, 3, 5, 5) and batch.labels is None


def test_tensors_and_model_config():
    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(load_data(x).images, x)  # float tensors are taken as already normalized
    batch = load_data((x, torch.arange(5)), input_size=(3, 4, 4))
    assert batch.images.shape == (5, 3, 4, 4) and batch.labels.tolist() == [0, 1, 2, 3, 4]
    model = torch.nn.Conv2d(3, 4, 3)
    model.pretrained_cfg = {"input_size": (3, 6, 6), "mean": (0.1, 0.2, 0.3), "std": (1.0, 1.0, 1.0)}
    pre = preprocess_for("imagefolder", model)
    assert pre.size == (6, 6) and pre.channels == 3 and pre.mean == (0.1, 0.2, 0.3)


@pytest.mark.parametrize("spec, message", [
    ("mnist:/tmp", "cannot read data spec"),
    ("cifar10:", "names no directory"),
    ("imagefolder:/definitely/not/here", "no such directory"),
])
def test_bad_specs_are_one_line_errors(spec, message):
    with pytest.raises(GhostifyError, match=message):
        open_data(spec)


def test_malformed_idx_and_cifar_files_are_one_line_errors(tmp_path):
    from ghostify.data import read_idx

    short = tmp_path / "short-idx"
    short.write_bytes(struct.pack(">BBBB", 0, 0, 0x08, 3) + b"\x00\x00")  # header promises 3 dims, has half of one
    with pytest.raises(GhostifyError, match="truncated IDX"):
        read_idx(short)
    floats = tmp_path / "floats-idx"
    floats.write_bytes(struct.pack(">BBBB", 0, 0, 0x0D, 1) + struct.pack(">I", 2) + b"\x00" * 7)  # 7 bytes of float32
    with pytest.raises(GhostifyError, match="truncated IDX"):
        read_idx(floats)

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (tmp_path / name).write_bytes(pickle.dumps({b"data": np.zeros(1000, np.uint8), b"labels": [0]}))
    with pytest.raises(GhostifyError, match="not a CIFAR-10 batch"):
        open_data(f"cifar10:{tmp_path}", train=False)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}))
    with pytest.raises(GhostifyError, match="2 images but 1 labels"):
        open_data(f"cifar10:{tmp_path}", train=False)
