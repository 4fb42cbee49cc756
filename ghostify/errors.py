"""Errors that mean "the user gave us something we cannot use", in library terms.

The library never speaks in command-line flags and carries no exit codes: an error names the
*argument* at fault (``param``), and the CLI (``ghostify/cli/errors.py``) maps that to its flag,
its hint and exit code 2. Anything that is not a :class:`GhostifyError` is a bug in ghostify (or
in the user's model code) and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["GhostifyError", "InvalidValueError", "OutputExistsError", "OutputIsInputError", "UnsafeModelFileError",
           "NothingToConvertError", "MissingWeightsError", "NeedsTorchError", "QuantizationError"]


class GhostifyError(Exception):
    """Bad input: a clear one-line message.

    ``param`` names the library argument the message is about (e.g. ``"input_size"``) and
    ``hint`` says what to do, in library terms; a front end replaces the hint with its own words
    (``pass --input-size C,H,W``). ``message`` is the problem alone.
    """

    def __init__(self, message: str, *, param: str | None = None, hint: str | None = None) -> None:
        super().__init__(message + (f"; {hint}" if hint else ""))
        self.message = message
        self.param = param
        self.hint = hint


class InvalidValueError(GhostifyError):
    """An argument out of its range: ``str()`` reads "<param> <what is wrong>"."""

    def __init__(self, param: str, problem: str) -> None:
        super().__init__(f"{param} {problem}", param=param)
        self.problem = problem


class OutputExistsError(GhostifyError):
    """An output file exists and the caller did not ask to overwrite it."""

    def __init__(self, path: Path, *, param: str | None = None) -> None:
        super().__init__(f"{path}: already exists", param=param)
        self.path = path


class OutputIsInputError(GhostifyError):
    """An output would replace a file the same call reads (or another of its outputs)."""

    def __init__(self, path: Path, *, param: str | None = None) -> None:
        super().__init__(f"{path}: is also an input or another output; refusing to overwrite it", param=param)
        self.path = path


class UnsafeModelFileError(GhostifyError):
    """A model file references code outside the allow-list; loading it needs ``trust=True``."""

    def __init__(self, message: str) -> None:
        super().__init__(message, param="trust",
                         hint="pass trust=True only if you trust the file, since that runs code stored in it")


class NothingToConvertError(GhostifyError):
    """The model has no convolution the policy converts (only raised with ``strict=True``)."""


class MissingWeightsError(GhostifyError):
    """Pretrained weights were asked for, are not cached, and cannot be downloaded."""

    def __init__(self, message: str, *, wanted: str, place: Path, hint: str | None = None) -> None:
        super().__init__(message, param="weights", hint=hint)
        self.wanted = wanted
        self.place = place


class NeedsTorchError(GhostifyError):
    """The call needs PyTorch, which is not installed (a deployment machine with onnxruntime only)."""


class QuantizationError(GhostifyError):
    """onnxruntime's quantizer cannot handle the model; ``node`` names the node where it failed (if known)."""

    def __init__(self, message: str, *, node: str | None = None, keep: str | None = None) -> None:
        hint = f"keep it in float (keep_float=[{keep!r}]) to quantize the rest" if keep else None
        super().__init__(message, param="keep_float" if keep else None, hint=hint)
        self.node = node
        self.keep = keep  # the name that keeps the node in float
