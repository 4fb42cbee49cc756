"""Data: the IDX reader and the data specs (``fashion-mnist:DIR``, ``cifar10:DIR``, ``imagefolder:DIR``).

Used for calibration, fine-tuning and evaluation; nothing is ever downloaded.
"""

from ghostify.data.idx import FASHION_MNIST_DIR, load_fashion_mnist, read_idx
from ghostify.data.specs import DATA_KINDS, Batch, ImageData, Preprocess, load_data, open_data, preprocess_for

__all__ = ["read_idx", "load_fashion_mnist", "FASHION_MNIST_DIR", "open_data", "load_data", "preprocess_for",
           "Preprocess", "ImageData", "Batch", "DATA_KINDS"]
