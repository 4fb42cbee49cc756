"""Whether PyTorch is here: a deployment board may have onnxruntime and no torch at all."""

from __future__ import annotations

from ghostify.errors import NeedsTorchError

__all__ = ["require_torch"]


def require_torch(what: str) -> None:
    """Raise :class:`NeedsTorchError` (one clear line) when ``what`` needs torch and it is missing."""
    try:
        import torch  # noqa: F401
    except ImportError as exc:  # not installed, or a broken install
        raise NeedsTorchError(f"{what} needs PyTorch, which cannot be imported here ({exc})",
                              hint="ghostify.runtime and ghostify.gates work without it") from None
