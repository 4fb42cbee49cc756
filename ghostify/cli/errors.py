"""Library errors in the command line's words: flags, hints, exit codes.

The library names the *argument* an error is about (``GhostifyError.param``) and says what to do
in library terms; here each argument becomes its flag and each hint the command-line way to
act on it. Every :class:`GhostifyError` is bad input: exit code 2.
"""

from __future__ import annotations

from ghostify.errors import (
    GhostifyError,
    InvalidValueError,
    MissingWeightsError,
    NeedsTorchError,
    OutputExistsError,
    OutputIsInputError,
    UnsafeModelFileError,
)

__all__ = ["flag_for", "cli_message", "BAD_INPUT", "FAILED", "INTERRUPTED", "INTERNAL"]

BAD_INPUT, FAILED, INTERNAL, INTERRUPTED = 2, 1, 1, 130

# library argument -> flag, where the flag is not "--" + the argument with dashes
_FLAGS = {
    "path": "--out", "calibration_data": "--calib", "calibration_samples": "--calib-samples",
    "macs_reduction": "--min-macs-reduction", "params_reduction": "--min-params-reduction",
    "latency_ratio": "--max-latency-ratio", "accuracy_drop": "--max-accuracy-drop",
    "thresholds": "--min-macs-reduction/--min-params-reduction/--max-latency-ratio/--max-accuracy-drop",
    "paths": "REPORT", "trust": "--trust", "lr": "--lr", "samples": "--calib-samples",
    "latency": "--latency-aware",
}
# library argument -> what to do, in the command line's words (replaces the library's hint)
_HINTS = {
    "input_size": "pass the size it expects with --input-size C,H,W",
    "arch": "name its architecture with --arch SPEC (e.g. --arch torchvision:resnet50)",
    "lr": "lower --lr",
    "thresholds": "pass at least one of --min-macs-reduction, --min-params-reduction, --max-latency-ratio, "
                  "--max-accuracy-drop",
    "opset": "lower --opset or use --exporter dynamo",
    "batch": "export with --dynamic-batch to time other batch sizes",
    "teacher": "is --teacher the model GHOST was converted from?",
    "weights": "pass --pretrained for its pretrained weights (a tag in the name picks others: timm:NAME.TAG), "
               "or --weights PATH for a local file",
}
_EXISTS_HINTS = {"checkpoint": "pass --resume to continue from it, or --force to start over"}


def flag_for(param: str, flags: dict[str, str] | None = None) -> str:
    """The flag a library argument is given by (``flags``: a command's own names first)."""
    table = {**_FLAGS, **(flags or {})}
    return table.get(param, "--" + param.replace("_", "-"))


def cli_message(exc: GhostifyError, flags: dict[str, str] | None = None) -> str:
    """The one line the command line prints for ``exc``."""
    text = _message(exc, flags).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _message(exc: GhostifyError, flags: dict[str, str] | None) -> str:
    param = exc.param
    if isinstance(exc, InvalidValueError):
        return f"{flag_for(exc.param, flags)} {exc.problem}"
    if isinstance(exc, OutputIsInputError):
        return (f"{exc.path}: is also an input or another output of this command; refusing to overwrite it "
                f"(choose another {flag_for(param or 'path', flags)})")
    if isinstance(exc, OutputExistsError):
        return f"{exc.path}: already exists; {_EXISTS_HINTS.get(param or '', 'pass --force to overwrite it')}"
    if isinstance(exc, UnsafeModelFileError):
        return f"{exc.message}; pass --trust only if you trust the file, since that executes code stored in it"
    if isinstance(exc, MissingWeightsError):  # the message says where to put the file; or give one
        return f"{exc.message}; or pass a local copy with --weights PATH"
    if isinstance(exc, NeedsTorchError):
        return f"{exc.message}; on a machine with only onnxruntime, `ghostify bench` and `ghostify check` work"
    hint = None
    if exc.hint is not None:  # in the CLI's words where it has them; else the library's is still a hint
        hint = _HINTS.get(param or "", exc.hint)
    return exc.message + (f"; {hint}" if hint else "")
