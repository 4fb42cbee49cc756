"""Running a model once on an example input: the one place that knows how to feed a model.

Used before any real work so that a wrong input size is the user's error in one clear line
(not a traceback from deep inside their model), and by counting, reports and export parity.

Two input conventions (:func:`input_convention`):

* ``"batch"``: one tensor ``(N, C, ...)``: image classifiers, segmentation models (which
  return a dict, ``out`` and ``aux``), 1-D and 3-D (video) networks;
* ``"images"``: torchvision's detection models (``torchvision.models.detection``) take a list of
  ``(C, H, W)`` images and, in eval mode, return a list of dicts (boxes, labels, scores, ...).

Everything else (counting, the report, the output check, ONNX parity) goes through
:func:`example_input` and :func:`model_input`, so it works for both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ghostify.errors import GhostifyError
from ghostify.utils import eval_mode, first_line, module_device_dtype

__all__ = ["example_input", "check_forward", "numpy_outputs", "input_convention", "model_input", "batch_size",
           "describe_output", "BATCH", "IMAGES"]

BATCH, IMAGES = "batch", "images"
_LAYOUTS = {2: "C,L", 3: "C,H,W", 4: "C,T,H,W"}


def input_convention(model: nn.Module) -> str:
    """``"images"`` for torchvision's detection models, else ``"batch"`` (see the module docstring)."""
    # a converted detector keeps its class: fx cannot trace a list input, so its modules are swapped
    return IMAGES if type(model).__module__.startswith("torchvision.models.detection") else BATCH


def model_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
    """A batch tensor ``(N, C, ...)`` as ``model`` takes it: itself, or a list of N images."""
    return list(x.unbind(0)) if input_convention(model) == IMAGES else x


def batch_size(x: torch.Tensor | Sequence[torch.Tensor]) -> int:
    """How many examples an input holds (a batch tensor, or a list of images)."""
    return len(x) if isinstance(x, (list, tuple)) else int(x.shape[0])


def example_input(model: nn.Module, input_size: Sequence[int], batch: int = 1,
                  generator: torch.Generator | None = None) -> torch.Tensor | list[torch.Tensor]:
    """A random batch of ``input_size`` on the model's device and dtype, in the model's convention."""
    device, dtype = module_device_dtype(model)
    x = torch.randn(batch, *[int(v) for v in input_size], generator=generator)
    return model_input(model, x.to(device=device, dtype=dtype))


def check_forward(model: nn.Module, input_size: Sequence[int]) -> Any:
    """Run the model once (eval mode, no grad); a failure means the input size is wrong for it."""
    with eval_mode(model), torch.no_grad():
        try:
            return model(example_input(model, input_size))
        except Exception as exc:
            layout = _LAYOUTS.get(len(input_size), "C,H,W")
            raise GhostifyError(f"the model rejected an input of size {tuple(input_size)} ({layout}): "
                                f"{first_line(exc, 300)}", param="input_size",
                                hint="give the size it expects (input_size=(C, H, W))") from exc


def numpy_outputs(model: nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    """Run ``model`` on the batch ``x`` in eval mode without grad; its tensor outputs (flattened) as numpy arrays."""
    with eval_mode(model), torch.no_grad():
        out = model(model_input(model, x))
    leaves = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
    if not leaves:
        raise GhostifyError(f"the model returned {type(out).__name__}, no tensor: nothing to export or compare")
    return [t.detach().cpu().float().numpy() for t in leaves]


def describe_output(out: Any, convention: str = BATCH) -> str:
    """The structure of a model's output with its tensors' shapes: ``(1, 1000)``, ``{out: (1, 21, 64, 64)}``.

    Two outputs of a model and of its conversion must describe alike. A detector's instance
    count (the first axis of its per-image tensors) depends on its weights, so for the
    ``"images"`` convention that axis reads ``N``.
    """
    if isinstance(out, torch.Tensor):
        dims = [str(v) for v in out.shape]
        if convention == IMAGES and dims:
            dims[0] = "N"
        return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"
    if isinstance(out, dict):
        return "{" + ", ".join(f"{k}: {describe_output(v, convention)}" for k, v in out.items()) + "}"
    if isinstance(out, (list, tuple)):
        inner = ", ".join(describe_output(v, convention) for v in out)
        return f"[{inner}]" if isinstance(out, list) else f"({inner})"
    return type(out).__name__
