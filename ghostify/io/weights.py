"""Pretrained weights from the ecosystem's own caches, and from local files; never a download.

* torchvision weight enums (``IMAGENET1K_V1``, ``DEFAULT``, ...) are read from torch hub's cache,
  ``$TORCH_HOME/hub/checkpoints/<file>``, where ``torchvision.models.get_model(weights=...)``
  would put them;
* timm's pretrained weights from the Hugging Face hub cache (``$HF_HUB_CACHE``, else
  ``$HF_HOME/hub``), else torch hub's cache for a timm model that has only a URL;
* a local file: safetensors, or ``torch.load`` with ``weights_only`` (ghostify's safe loader).

Where a file is missing, :class:`MissingWeightsError` says which file, where to place it and
where to get it. Nothing here opens a network connection: torchvision's ``get_state_dict`` is
replaced, for the duration of a build, by a reader of the cached file (torchvision would
otherwise download on a cache miss, and unpickle the cache file with ``weights_only=False``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from ghostify.errors import GhostifyError, MissingWeightsError, UnsafeModelFileError
from ghostify.utils import first_line

__all__ = ["torch_hub_checkpoints", "hf_hub_cache", "looks_like_weights_file", "read_state_dict", "fit_error",
           "load_weights_file",
           "torchvision_weights", "torchvision_state_dicts", "timm_pretrained_file", "WEIGHTS_SUFFIXES"]

WEIGHTS_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin", ".ckpt", ".pth.tar")
_LOCAL_HINT = "or give a local copy as weights=PATH"


def torch_hub_checkpoints() -> Path:
    """Where torch hub keeps downloaded checkpoints (``$TORCH_HOME/hub/checkpoints``), read now."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache as huggingface_hub resolves it, read from the environment now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def looks_like_weights_file(text: str) -> bool:
    """A path rather than a weight name: it exists, has a directory part or a weights suffix."""
    return os.path.exists(text) or os.sep in text or text.endswith(WEIGHTS_SUFFIXES)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state_dict in a local file, read without running code (safetensors, or weights_only)."""
    from ghostify.io.safe_load import safe_torch_load

    path = Path(path)
    if not path.is_file():
        raise GhostifyError(f"{path}: no such weights file" if not path.exists() else f"{path}: not a file",
                            param="weights")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # a truncated or foreign file: the user's to fix, in one line
            raise GhostifyError(f"{path}: not a readable safetensors file ({first_line(exc)})",
                                param="weights") from None
    try:
        obj = safe_torch_load(path)
    except UnsafeModelFileError as exc:  # trusting it is no option: a weights file holds tensors, not code
        raise GhostifyError(f"{exc.message}; a weights file should hold tensors only", param="weights") from None
    for key in ("state_dict", "model", "state_dict_ema"):  # training checkpoints nest the weights
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not (isinstance(obj, dict) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in obj.items())):
        raise GhostifyError(f"{path}: holds a {type(obj).__name__}, not a state_dict (parameter names to tensors)",
                            param="weights")
    return obj


def fit_error(exc: BaseException, limit: int = 300) -> str:
    """``load_state_dict``'s complaint in one line: its first line names only the class, the second what is wrong."""
    lines = [" ".join(line.split()) for line in str(exc).strip().splitlines() if line.strip()]
    text = " ".join(lines[:2]) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def load_weights_file(model: nn.Module, path: str | os.PathLike, what: str) -> None:
    """Load the state_dict in ``path`` into ``model`` (strict); ``what`` names the model in errors."""
    state = read_state_dict(path)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise GhostifyError(f"{path}: does not fit {what}: {fit_error(exc)}", param="weights") from None


def torchvision_weights(name: str, text: str) -> Any:
    """The weight enum ``text`` names for model ``name``: ``DEFAULT``, ``IMAGENET1K_V1`` or ``Enum.NAME``."""
    from torchvision.models import get_model_weights

    enum = get_model_weights(name)
    member = text.rpartition(".")[2] if text.startswith(enum.__name__ + ".") else text
    choices = ["DEFAULT", *(w.name for w in enum)]
    if member not in choices:
        raise GhostifyError(f"torchvision:{name} has no weights {text!r} (it has {', '.join(choices)})",
                            param="weights")
    return enum.DEFAULT if member == "DEFAULT" else enum[member]


def _cached_torchvision_file(weights: Any, spec: str) -> Path:
    filename = os.path.basename(urlparse(weights.url).path)
    where = torch_hub_checkpoints()
    path = where / filename
    if not path.is_file():
        raise MissingWeightsError(
            f"{spec} {weights.name} needs {filename} in {where} (ghostify never downloads): download it from "
            f"{weights.url} and place it there", wanted=filename, place=where, hint=_LOCAL_HINT)
    return path


@contextlib.contextmanager
def torchvision_state_dicts(spec: str, architecture_only: bool = False) -> Iterator[None]:
    """Inside the block, torchvision's builders read weights from torch hub's cache, safely, or not at all.

    A builder given ``weights=W`` configures the architecture for ``W`` (``num_classes``, an aux
    head, ``transform_input``, ``image_size``...), calls ``W.get_state_dict()`` and loads it,
    then fixes up what loading cannot (e.g. FrozenBatchNorm's eps). Replacing ``get_state_dict``
    keeps all of that and changes only where the tensors come from: the cached file read with
    ``weights_only`` (never a download), or, with ``architecture_only``, the model's own fresh
    state_dict, which builds ``W``'s architecture with no file at all (an archive's weights
    follow).
    """
    from torchvision.models._api import WeightsEnum

    original = WeightsEnum.get_state_dict

    def get_state_dict(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if architecture_only:
            model = sys._getframe(1).f_locals.get("model")  # the builder's model, just constructed
            if not isinstance(model, nn.Module):
                raise GhostifyError(f"cannot rebuild the architecture of {spec} with weights {self}: "
                                    "its builder does not name its model 'model'")
            return model.state_dict()
        return read_state_dict(_cached_torchvision_file(self, spec))

    WeightsEnum.get_state_dict = get_state_dict  # type: ignore[method-assign]
    try:
        yield
    finally:
        WeightsEnum.get_state_dict = original  # type: ignore[method-assign]


def timm_pretrained_file(name: str) -> tuple[Path, str]:
    """(cached file, where it came from) of timm model ``name``'s pretrained weights, or a clear error."""
    import timm.models

    cfg = timm.models.get_pretrained_cfg(name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    url = getattr(cfg, "url", None) if cfg is not None else None
    if not repo and not url:
        raise GhostifyError(f"timm:{name} has no pretrained weights", param="pretrained")
    if repo:
        from huggingface_hub import try_to_load_from_cache

        repo_id, _, revision = repo.partition("@")
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for filename in names:
            found = try_to_load_from_cache(repo_id, filename, cache_dir=hf_hub_cache(), revision=revision or None)
            if isinstance(found, str):
                return Path(found), f"hf-hub:{repo}"
    if url:
        path = torch_hub_checkpoints() / os.path.basename(urlparse(url).path)
        if path.is_file():  # timm's older cache, and models with only a URL
            return path, url
    if repo:
        raise MissingWeightsError(
            f"timm:{name} needs {names[0]} of {repo} in the Hugging Face cache {hf_hub_cache()} (ghostify never "
            f"downloads): put it there with `hf download {repo} {names[0]}`, or download it from "
            f"https://huggingface.co/{repo_id}/resolve/main/{names[0]}", wanted=names[0], place=hf_hub_cache(),
            hint=_LOCAL_HINT)
    filename = os.path.basename(urlparse(url).path)
    raise MissingWeightsError(f"timm:{name} needs {filename} in {torch_hub_checkpoints()} (ghostify never "
                              f"downloads): download it from {url} and place it there", wanted=filename,
                              place=torch_hub_checkpoints(), hint=_LOCAL_HINT)
