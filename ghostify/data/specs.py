"""Data specs: the strings that name a data set wherever ghostify accepts data.

* ``fashion-mnist:DIR``: the IDX files (``apt-get install -y dataset-fashion-mnist`` puts them
  in ``/usr/share/datasets/fashion-mnist``); ``fashion-mnist`` alone means that directory;
* ``cifar10:DIR``: the python-pickle batches torchvision reads (``data_batch_1..5``,
  ``test_batch``; DIR or DIR/cifar-10-batches-py), unpickled with an allow-list (numpy arrays
  only, no code runs);
* ``imagefolder:DIR``: ``DIR/<class>/<image>`` (labels from the folder names) or images directly
  in DIR (unlabeled); ``DIR/train`` and ``DIR/val`` (or ``test``) are used as splits when present;
* in Python, a tensor ``(N, C, H, W)`` or a pair ``(images, labels)``.

Every sample goes through :class:`Preprocess`: to float in [0, 1], grayscale to 3 channels (or
RGB to 1) as the model wants, resize to the model's input size, normalize with the model's
mean/std (its timm config) or the data set's own statistics, or flags. Nothing is downloaded.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ghostify.data.idx import FASHION_MNIST_DIR, load_fashion_mnist
from ghostify.errors import GhostifyError

__all__ = ["Preprocess", "ImageData", "Batch", "open_data", "load_data", "preprocess_for", "DATA_KINDS",
           "IMAGE_SUFFIXES", "DATASET_STATS"]

DATA_KINDS = ("fashion-mnist", "cifar10", "imagefolder")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# Each data set's own statistics: the default for a model without a normalization config.
DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagefolder": IMAGENET_STATS,
    "tensor": ((0.0,), (1.0,)),
}


@dataclass
class Preprocess:
    """uint8/float image (C, H, W) -> the float tensor the model expects."""

    channels: int | None = None  # None: keep the data's channels
    size: tuple[int, int] | None = None  # (H, W); None: keep
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        batched = x.dim() == 4
        x = x if batched else x.unsqueeze(0)
        x = x.float().div(255.0) if not x.is_floating_point() else x.float()
        c = x.shape[1]
        if self.channels is not None and c != self.channels:
            if c == 1:  # grayscale -> as many identical channels as the model reads
                x = x.expand(-1, self.channels, -1, -1)
            elif self.channels == 1:
                x = x.mean(1, keepdim=True)
            else:
                raise GhostifyError(f"the data has {c} channels but the model wants {self.channels}")
        if self.size is not None and tuple(x.shape[-2:]) != tuple(self.size):
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        ch = x.shape[1]
        mean = torch.tensor(_per_channel(self.mean, ch), dtype=x.dtype).view(1, ch, 1, 1)
        std = torch.tensor(_per_channel(self.std, ch), dtype=x.dtype).view(1, ch, 1, 1)
        x = (x - mean) / std
        return x if batched else x[0]


def _per_channel(values: Sequence[float], c: int) -> list[float]:
    values = list(values)
    if len(values) == c:
        return values
    if len(values) == 1:
        return values * c
    if c == 1:  # e.g. RGB statistics for data turned to one channel
        return [sum(values) / len(values)]
    raise GhostifyError(f"mean/std have {len(values)} values but the data has {c} channels")


class ImageData(Dataset):
    """A data set: raw images (in memory, or files read on demand), labels, a preprocessing."""

    def __init__(self, name: str, images: torch.Tensor | None = None, files: list[Path] | None = None,
                 labels: torch.Tensor | None = None, classes: list[str] | None = None,
                 transform: Preprocess | None = None) -> None:
        self.name = name
        self.images = images
        self.files = files
        self.labels = labels
        self.classes = classes
        self.transform = transform or Preprocess()

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    @property
    def num_classes(self) -> int | None:
        if self.classes is not None:
            return len(self.classes)
        return int(self.labels.max()) + 1 if self.labels is not None and self.labels.numel() else None

    def __len__(self) -> int:
        return self.images.shape[0] if self.images is not None else len(self.files or [])

    def raw(self, i: int) -> torch.Tensor:
        if self.images is not None:
            x = self.images[i]
            return x.unsqueeze(0) if x.dim() == 2 else x
        return _read_image(self.files[i])  # type: ignore[index]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.transform(self.raw(i))
        y = int(self.labels[i]) if self.labels is not None else -1
        return x, y

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        # DataLoader's batched fetch: preprocess in-memory images as one batch, not one by one
        if self.images is None:
            return [self[i] for i in indices]
        idx = torch.as_tensor(indices, dtype=torch.long)
        raw = self.images[idx]
        x = self.transform(raw if raw.dim() == 4 else raw.unsqueeze(1))
        ys = self.labels[idx].tolist() if self.labels is not None else [-1] * len(indices)
        return list(zip(x.unbind(0), ys, strict=True))

    def subset(self, count: int, seed: int = 0) -> ImageData:
        """A fixed random subset of ``count`` samples (all of them when count >= len)."""
        n = len(self)
        if count >= n:
            return self
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:count]
        return ImageData(self.name, images=self.images[idx] if self.images is not None else None,
                         files=[self.files[i] for i in idx.tolist()] if self.files is not None else None,
                         labels=self.labels[idx] if self.labels is not None else None, classes=self.classes,
                         transform=self.transform)


@dataclass
class Batch:
    images: torch.Tensor  # preprocessed float (N, C, H, W)
    labels: torch.Tensor | None


def _read_image(path: Path) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("L") if img.mode in ("L", "I;16", "I", "1") else img.convert("RGB")
            data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
            c = 1 if img.mode == "L" else 3
            return data.view(img.height, img.width, c).permute(2, 0, 1).contiguous()
    except OSError as exc:
        raise GhostifyError(f"{path}: cannot read image ({exc})") from None


# -- CIFAR-10 python batches, unpickled without running code ------------------------------------

class _NumpyOnly(pickle.Unpickler):
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise GhostifyError(f"CIFAR batch references {module}.{name}; refusing to unpickle it")
        return super().find_class(module, name)


def _cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    import numpy as np

    try:
        obj = _NumpyOnly(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise GhostifyError(f"{path}: not a CIFAR-10 python batch ({exc})") from None
    if not isinstance(obj, dict):
        raise GhostifyError(f"{path}: not a CIFAR-10 python batch")
    data = obj.get(b"data", obj.get("data"))
    labels = obj.get(b"labels", obj.get("labels"))
    if data is None or labels is None:
        raise GhostifyError(f"{path}: CIFAR-10 batch without data/labels")
    try:
        data = np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = torch.tensor(list(labels), dtype=torch.long)
    except (ValueError, TypeError, OverflowError) as exc:
        raise GhostifyError(f"{path}: not a CIFAR-10 batch (data must be N×3072 bytes, labels N integers: "
                            f"{exc})") from None
    if labels.shape[0] != data.shape[0]:
        raise GhostifyError(f"{path}: CIFAR-10 batch with {data.shape[0]} images but {labels.shape[0]} labels")
    return torch.from_numpy(data.copy()), labels


def _cifar10(root: Path, train: bool) -> ImageData:
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    missing = [n for n in names if not (root / n).exists()]
    if missing:
        raise GhostifyError(f"{root}: no CIFAR-10 python batches ({', '.join(missing)} missing)")
    parts = [_cifar_batch(root / n) for n in names]
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    return ImageData("cifar10", images=torch.cat([p[0] for p in parts]), labels=torch.cat([p[1] for p in parts]),
                     classes=classes)


def _imagefolder(root: Path, train: bool) -> ImageData:
    split = None
    for cand in (("train",) if train else ("val", "test")):
        if (root / cand).is_dir():
            split = root / cand
            break
    if split is None and not train and (root / "train").is_dir():
        raise GhostifyError(f"{root}: has train/ but no val/ or test/ split")
    base = split or root
    subdirs = sorted(p for p in base.iterdir() if p.is_dir())
    files: list[Path] = []
    labels: list[int] = []
    classes: list[str] | None = None
    if subdirs:
        classes = [p.name for p in subdirs]
        for k, sub in enumerate(subdirs):
            for f in sorted(sub.rglob("*")):
                if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
                    files.append(f)
                    labels.append(k)
    else:
        files = sorted(f for f in base.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
    if not files:
        raise GhostifyError(f"{base}: no images found ({', '.join(IMAGE_SUFFIXES[:4])}...)")
    return ImageData("imagefolder", files=files, labels=torch.tensor(labels) if classes else None, classes=classes)


def _parse(spec: str) -> tuple[str, Path]:
    kind, sep, rest = spec.partition(":")
    kind = kind.strip().lower().replace("_", "-")
    if kind in ("fmnist", "fashionmnist"):
        kind = "fashion-mnist"
    if kind not in DATA_KINDS:
        raise GhostifyError(f"cannot read data spec {spec!r}: use fashion-mnist:DIR, cifar10:DIR or imagefolder:DIR")
    if not rest:
        if kind == "fashion-mnist":
            return kind, FASHION_MNIST_DIR
        raise GhostifyError(f"data spec {spec!r} names no directory (e.g. {kind}:/path/to/data)")
    path = Path(rest).expanduser()
    if not path.exists():
        raise GhostifyError(f"{path}: no such directory (data spec {spec!r})")
    if not path.is_dir():
        raise GhostifyError(f"{path}: is not a directory (data spec {spec!r})")
    return kind, path


def preprocess_for(kind: str, model: nn.Module | None = None, input_size: Sequence[int] | None = None,
                   mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> Preprocess:
    """The preprocessing a model wants: flags first, then the model's (timm) config, then the data's stats."""
    cfg = (getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)) if model is not None else None
    cfg = cfg if isinstance(cfg, dict) else {}
    size = tuple(int(v) for v in input_size) if input_size is not None else (
        tuple(cfg["input_size"]) if cfg.get("input_size") else None)
    channels = size[0] if size is not None else None
    hw = (size[1], size[2]) if size is not None else None
    d_mean, d_std = DATASET_STATS.get(kind, IMAGENET_STATS)
    mean = tuple(mean) if mean is not None else tuple(cfg.get("mean", d_mean))
    std = tuple(std) if std is not None else tuple(cfg.get("std", d_std))
    if any(v <= 0 for v in std):
        raise GhostifyError(f"std must be positive, got {std}")
    return Preprocess(channels=channels, size=hw, mean=mean, std=std)  # type: ignore[arg-type]


def open_data(spec: Any, *, train: bool = True, model: nn.Module | None = None,
              input_size: Sequence[int] | None = None, mean: Sequence[float] | None = None,
              std: Sequence[float] | None = None) -> ImageData:
    """A data spec (or a tensor / ``(images, labels)`` pair) as an :class:`ImageData` set."""
    if isinstance(spec, ImageData):
        return spec
    if isinstance(spec, torch.Tensor) or (isinstance(spec, (tuple, list)) and spec and
                                          isinstance(spec[0], torch.Tensor)):
        images, labels = (spec, None) if isinstance(spec, torch.Tensor) else (spec[0], spec[1] if len(spec) > 1
                                                                               else None)
        if images.dim() == 3:
            images = images.unsqueeze(1)
        if images.dim() != 4:
            raise GhostifyError(f"image tensor must be (N, C, H, W), got shape {tuple(images.shape)}")
        if labels is not None and labels.shape[0] != images.shape[0]:
            raise GhostifyError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        # float tensors are taken as already normalized unless mean/std are given
        kind = "tensor" if images.is_floating_point() else "imagefolder"
        data = ImageData("tensor", images=images, labels=None if labels is None else labels.long())
        data.transform = preprocess_for(kind, model, input_size, mean, std)
        return data
    if not isinstance(spec, str):
        raise GhostifyError(f"data must be a data spec string or a tensor, got {type(spec).__name__}")
    kind, path = _parse(spec)
    if kind == "fashion-mnist":
        images, labels = load_fashion_mnist(path, train=train)
        data = ImageData("fashion-mnist", images=images.unsqueeze(1), labels=labels,
                         classes=["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                  "Sneaker", "Bag", "Ankle boot"])
    elif kind == "cifar10":
        data = _cifar10(path, train)
    else:
        data = _imagefolder(path, train)
    data.transform = preprocess_for(kind, model, input_size, mean, std)
    return data


def load_data(spec: Any, *, train: bool = True, model: nn.Module | None = None,
              input_size: Sequence[int] | None = None, mean: Sequence[float] | None = None,
              std: Sequence[float] | None = None, max_samples: int | None = None, seed: int = 0) -> Batch:
    """Preprocessed images (and labels) in memory: for calibration, tests, small evaluations."""
    data = open_data(spec, train=train, model=model, input_size=input_size, mean=mean, std=std)
    if max_samples is not None:
        if max_samples < 1:
            raise GhostifyError(f"the number of samples must be >= 1, got {max_samples}")
        data = data.subset(max_samples, seed)
    if data.images is not None:
        images = data.transform(data.images if data.images.dim() == 4 else data.images.unsqueeze(1))
    else:
        images = torch.stack([data.transform(data.raw(i)) for i in range(len(data))])
    return Batch(images=images, labels=data.labels)
