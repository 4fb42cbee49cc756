"""Small helpers every layer of ghostify shares, each written once.

Nothing here imports torch at module level: the torch-free commands (``bench``, ``check``) use
the file helpers too.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ghostify.errors import GhostifyError, OutputExistsError, OutputIsInputError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["channel_sums", "first_line", "set_submodule", "preserved_modes", "eval_mode", "atomic_write",
           "check_output_path", "check_output_dir", "existing_paths", "module_device_dtype"]


def first_line(exc: BaseException, limit: int = 240, *, with_type: bool = False) -> str:
    """The first line of an exception's message (its type name when it has none), at most ``limit`` chars."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    if with_type:
        line = f"{type(exc).__name__}: {line}" if line else type(exc).__name__
    elif not line:
        line = type(exc).__name__
    return line[:limit]


def channel_sums(x: Any) -> tuple[Any, Any]:
    """Per-channel sum and sum of squares of a (batch, channels, *spatial) tensor, in float64.

    Each sample's map is summed in its own precision first (contiguous and fast), then across the
    batch in float64: no float64 copy of the maps, and precise enough for BN statistics and errors.
    """
    import torch

    flat = x.reshape(x.shape[0], x.shape[1], -1)
    return flat.sum(-1).to(torch.float64).sum(0), (flat * flat).sum(-1).to(torch.float64).sum(0)


def set_submodule(root: nn.Module, qualname: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted name ``qualname`` inside ``root`` (replacing what is there)."""
    parent_name, _, leaf = qualname.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, module)


@contextlib.contextmanager
def preserved_modes(*models: nn.Module) -> Iterator[None]:
    """Give every submodule of ``models`` back its own train/eval flag when the block ends.

    Restoring only the root's flag (``model.train(was)``) would also flip submodules the caller
    had set apart, e.g. a frozen BatchNorm in eval mode inside a training model.
    """
    saved = [(m, m.training) for model in models for m in model.modules()]
    try:
        yield
    finally:
        for m, training in saved:
            m.training = training


@contextlib.contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """``models`` in eval mode inside the block, every submodule's own flag restored afterwards."""
    with preserved_modes(*models):
        for model in models:
            model.eval()
        yield


def module_device_dtype(module: nn.Module) -> tuple[Any, Any]:
    """(device, floating dtype) of the first parameter (or buffer): where inputs must go."""
    import torch

    t = next(module.parameters(), None)
    if t is None:
        t = next(module.buffers(), None)
    if t is None:
        return torch.device("cpu"), torch.float32
    return t.device, (t.dtype if t.is_floating_point() else torch.float32)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place.

    An interrupted write leaves the old file (or none), never a half-written one.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                                   dir=path.parent if str(path.parent) else ".")
    except OSError as exc:  # unwritable or missing directory, disk full: the user's to fix, one line
        raise GhostifyError(f"{path}: cannot write ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise GhostifyError(f"{path}: cannot write ({exc.strerror or exc}); nothing was written") from None
        raise
    return path


def check_output_path(out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = (),
                      overwrite: bool = False, *, param: str | None = None) -> Path:
    """Refuse to replace an input, or an existing file unless ``overwrite``; the directory must be writable.

    ``inputs`` are the files the call reads and its other outputs: ``out`` may be none of them,
    whatever ``overwrite`` says. ``param`` names the argument ``out`` came from (for messages).
    """
    out = Path(out)
    for src in inputs:
        if src is not None and out.resolve() == Path(src).resolve():
            raise OutputIsInputError(out, param=param)
    if out.exists() and out.is_dir():
        raise GhostifyError(f"{out}: is a directory; give a file path", param=param)
    if out.exists() and not overwrite:
        raise OutputExistsError(out, param=param)
    check_output_dir(out.parent if str(out.parent) else Path("."), out.name)
    return out


def check_output_dir(directory: Path, name: str | None = None) -> Path:
    """``directory`` exists, is a directory and is writable (else one clear line)."""
    if not directory.exists():
        raise GhostifyError(f"{directory}: output directory does not exist")
    if not directory.is_dir():
        what = f", cannot write {name} inside it" if name else ""
        raise GhostifyError(f"{directory}: is not a directory{what}")
    if not os.access(directory, os.W_OK):
        raise GhostifyError(f"{directory}: output directory is not writable")
    return directory


def existing_paths(specs: Sequence[str | os.PathLike | None]) -> list[Path]:
    """The local files a model or data spec reads: the spec itself, or what follows ``kind:``.

    Outputs are checked against them, so that no output (not even when overwriting) replaces a
    file the call reads: the model, an architecture or teacher model file, a data file.
    """
    paths = []
    for spec in specs:
        if spec is None:
            continue
        text = str(spec)
        for cand in (text, text.split(":", 1)[1] if ":" in text else ""):
            if cand and Path(cand).exists():
                paths.append(Path(cand))
    return paths
