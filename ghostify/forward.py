"""Running a model once on an example input: the one place that knows how to feed a model.

Used before any real work so that a wrong input size is the user's error in one clear line
(not a traceback from deep inside their model), and by counting, reports and export parity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ghostify.errors import GhostifyError
from ghostify.utils import eval_mode, first_line, module_device_dtype

__all__ = ["example_input", "check_forward", "numpy_outputs"]


def example_input(model: nn.Module, input_size: Sequence[int], batch: int = 1,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """A random batch of ``input_size`` on the model's device and dtype."""
    device, dtype = module_device_dtype(model)
    x = torch.randn(batch, *[int(v) for v in input_size], generator=generator)
    return x.to(device=device, dtype=dtype)


def check_forward(model: nn.Module, input_size: Sequence[int]) -> Any:
    """Run the model once (eval mode, no grad); a failure means the input size is wrong for it."""
    with eval_mode(model), torch.no_grad():
        try:
            return model(example_input(model, input_size))
        except Exception as exc:
            raise GhostifyError(f"the model rejected an input of size {tuple(input_size)} (C,H,W): "
                                f"{first_line(exc, 300)}", param="input_size",
                                hint="give the size it expects (input_size=(C, H, W))") from exc


def numpy_outputs(model: nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    """Run ``model`` in eval mode without grad; its tensor outputs (flattened) as numpy arrays."""
    with eval_mode(model), torch.no_grad():
        out = model(x)
    leaves = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
    if not leaves:
        raise GhostifyError(f"the model returned {type(out).__name__}, no tensor: nothing to export or compare")
    return [t.detach().cpu().float().numpy() for t in leaves]
