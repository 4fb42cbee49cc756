"""Top-1 accuracy on a labelled test set (the figure the fine-tuning records and the gates read)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ghostify.utils import eval_mode

__all__ = ["evaluate"]


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, batch_size: int = 500, device: torch.device | str = "cpu",
             amp: bool = False) -> float | None:
    """Top-1 accuracy (%) on a labelled data set; None when it has no labels (samples labelled -1 are skipped)."""
    if getattr(data, "labels", 0) is None:
        return None
    correct = total = 0
    dev = torch.device(device)
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, generator=torch.Generator())  # global RNG untouched
    with eval_mode(model):
        for x, y in loader:
            x, y = x.to(dev), y.to(dev)
            with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=amp and dev.type == "cuda"):
                out = model(x)
            mask = y >= 0
            correct += int((out.argmax(1)[mask] == y[mask]).sum())
            total += int(mask.sum())
    return 100.0 * correct / total if total else None
