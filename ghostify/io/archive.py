"""The ``.ghost`` archive: a converted model that reloads without executing pickled code.

A zip (stored, not compressed) holding

* ``recipe.json``: how to rebuild the architecture: the source model spec (or ``source.pt``),
  where the source's weights came from (``weights``), the GhostConfig and init, the input
  size, the ghostify version, the report totals;
* ``model.safetensors``: every parameter and buffer of the converted model (no pickle);
* ``source.pt`` (file sources only): the original model's skeleton, its tensors on the meta
  device (a few KB), loaded with the same allow-list as any model file.

``load`` rebuilds the source architecture, re-runs the (deterministic) conversion, checks that
it converted the same layers, and loads the weights. Writes go to a temporary file that is
renamed into place, so an interrupted save leaves nothing half-written.
"""

from __future__ import annotations

import copy
import io
import json
import os
import tempfile
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ghostify.errors import GhostifyError, UnsafeModelFileError
from ghostify.plan import get_plan
from ghostify.utils import atomic_write, check_output_path, first_line

__all__ = ["save", "resave", "load", "load_archive", "FORMAT"]

FORMAT = "ghostify.archive/1"


def _skeleton(model: nn.Module) -> bytes:
    """``torch.save`` of the model with parameters and persistent buffers on the meta device."""
    skel = copy.deepcopy(model)
    for mod in skel.modules():
        for name, p in list(mod._parameters.items()):
            if p is not None:
                mod._parameters[name] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
        for name, b in list(mod._buffers.items()):
            if b is not None and name not in mod._non_persistent_buffers_set:
                mod._buffers[name] = torch.empty_like(b, device="meta")
    buf = io.BytesIO()
    torch.save(skel, buf)
    return buf.getvalue()


def _materialize(model: nn.Module) -> nn.Module:
    for mod in model.modules():
        for name, p in list(mod._parameters.items()):
            if p is not None and p.is_meta:
                mod._parameters[name] = nn.Parameter(torch.zeros_like(p, device="cpu"), requires_grad=p.requires_grad)
        for name, b in list(mod._buffers.items()):
            if b is not None and b.is_meta:
                mod._buffers[name] = torch.zeros_like(b, device="cpu")
    return model


def _tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """state_dict without aliases (safetensors stores each storage once) + the alias map."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)) if t.numel() else None
        if key is not None and key in seen:
            aliases[name] = seen[key]
            continue
        if key is not None:
            seen[key] = name
        tensors[name] = t.detach().contiguous().cpu()
    return tensors, aliases


def save(
    model: nn.Module,
    path: str | os.PathLike,
    source: str | nn.Module | os.PathLike,
    input_size: Sequence[int],
    *,
    force: bool = False,
    inputs: Sequence[str | os.PathLike | None] = (),
    extra: dict[str, Any] | None = None,
    weights: str | None = None,
) -> Path:
    """Write ``model`` (a ``ghostify.convert`` output) to a ``.ghost`` archive.

    ``source`` is the spec the original came from (``"torchvision:resnet50"``), the original
    module itself when it came from a pickle file (its skeleton is stored in the archive), or
    the path of a ``.pt2`` torch.export archive (stored as it is). ``weights`` records where the
    original's weights came from (``LoadedModel.weights``; None: its random init); a torchvision
    weight enum also names the architecture to rebuild (some add an aux head).
    """
    from ghostify._version import __version__

    plan = get_plan(model)
    if plan is None:
        raise GhostifyError("ghostify.save expects a model returned by ghostify.convert")
    out = check_output_path(path, inputs, force, param="path")
    recipe: dict[str, Any] = {
        "format": FORMAT,
        "ghostify_version": __version__,
        "torch_version": torch.__version__,
        "source": source if isinstance(source, str) else None,  # else a source.* member
        "weights": weights,
        "input_size": [int(v) for v in input_size],
        "config": plan.config,
        "init": plan.init,
        "mode": plan.mode,
        "converted": [layer.name for layer in plan.converted],
        **(extra or {}),
    }
    if isinstance(source, nn.Module):
        members = {"source.pt": _skeleton(source)}
    elif isinstance(source, os.PathLike):  # a torch.export archive: kept as it is (no pickle)
        members = {"source.pt2": Path(source).read_bytes()}
    else:
        members = {}
    return _write(out, model, recipe, members)


def _write(out: Path, model: nn.Module, recipe: dict[str, Any], members: dict[str, bytes]) -> Path:
    """Zip recipe + safetensors weights + source members in memory, then write atomically."""
    from safetensors.torch import save as st_save

    tensors, aliases = _tensors(model)
    recipe["aliases"] = aliases
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("recipe.json", json.dumps(recipe, indent=2))
        zf.writestr("model.safetensors", st_save(tensors))
        for name, data in members.items():
            zf.writestr(name, data)
    return atomic_write(out, buf.getvalue())


def _check_recipe(recipe: Any, path: Path) -> None:
    """The recipe's fields have the types ``load_archive`` reads; else a one-line error naming the archive."""
    def bad(what: str) -> GhostifyError:
        return GhostifyError(f"{path}: not a valid ghostify archive (recipe.json: {what})")

    if not isinstance(recipe, dict):
        raise bad(f"expected an object, got {type(recipe).__name__}")
    if recipe.get("format") != FORMAT:
        raise GhostifyError(f"{path}: unsupported archive format {recipe.get('format')!r} (expected {FORMAT})")
    if not isinstance(recipe.get("config"), dict):
        raise bad("no 'config' object")
    converted = recipe.get("converted")
    if not isinstance(converted, list) or not all(isinstance(n, str) for n in converted):
        raise bad("'converted' must be a list of layer names")
    size = recipe.get("input_size")
    if (not isinstance(size, list) or not 2 <= len(size) <= 4
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise bad(f"'input_size' must be 2 to 4 positive integers (C,L / C,H,W / C,T,H,W), got {size!r}")
    aliases = recipe.get("aliases", {})
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        raise bad("'aliases' must map names to names")
    if recipe.get("source") is not None and not isinstance(recipe["source"], str):
        raise bad("'source' must be a model spec")
    if not isinstance(recipe.get("init", "random"), str):
        raise bad("'init' must be a string")
    if recipe.get("weights") is not None and not isinstance(recipe["weights"], str):
        raise bad("'weights' must be a string (where the source's weights came from) or null")


def load_archive(path: str | os.PathLike, trust: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild and fill the model in a ``.ghost`` archive; return it (eval mode) and its recipe."""
    from safetensors.torch import load as st_load

    from ghostify.conversion import convert
    from ghostify.io.registry import REGISTRIES, build_source
    from ghostify.io.safe_load import exported_module, safe_torch_load
    from ghostify.io.weights import fit_error
    from ghostify.policy import GhostConfig

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if "recipe.json" not in names or "model.safetensors" not in names:
                raise GhostifyError(f"{path}: not a ghostify archive (no recipe.json / model.safetensors)")
            recipe = json.loads(zf.read("recipe.json"))
            weights = zf.read("model.safetensors")
            skeleton = zf.read("source.pt") if "source.pt" in names else None
            exported = zf.read("source.pt2") if "source.pt2" in names else None
    except (zipfile.BadZipFile, OSError, json.JSONDecodeError, UnicodeDecodeError, NotImplementedError, zlib.error,
            EOFError, RecursionError) as exc:
        raise GhostifyError(f"{path}: not a readable ghostify archive ({first_line(exc, with_type=True)})") from None
    except KeyError as exc:
        raise GhostifyError(f"{path}: truncated ghostify archive ({exc})") from None
    _check_recipe(recipe, path)
    if skeleton is not None:
        try:
            source = _materialize(safe_torch_load(skeleton, trust=trust))
        except GhostifyError as exc:  # name the archive, not the in-memory member
            raise GhostifyError(f"{path}: its source.pt member: {str(exc).replace('<bytes>: ', '')}") from None
    elif exported is not None:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "source.pt2").write_bytes(exported)
            try:
                source = exported_module(Path(tmp) / "source.pt2")
            except GhostifyError as exc:
                raise GhostifyError(f"{path}: its source.pt2 member: {str(exc).replace(str(Path(tmp)) + '/', '')}"
                                    ) from None
    elif recipe.get("source"):
        spec = recipe["source"]
        if spec.partition(":")[0] not in REGISTRIES and not trust:
            # rebuilding from a factory spec imports and calls code the archive names: like unpickling
            raise UnsafeModelFileError(f"{path}: its source architecture is {spec!r}, which ghostify would have to "
                                       "import and run to rebuild the model")
        # the architecture the source's weights imply (a torchvision enum can add an aux head);
        # nothing is read for them: the archive's own weights follow
        source = build_source(spec, weights=recipe.get("weights"), architecture_only=True).model.eval()
    else:
        raise GhostifyError(f"{path}: the archive names no source architecture")
    try:
        config = GhostConfig.from_dict(recipe["config"])
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise GhostifyError(f"{path}: the archive's conversion config is not valid ({first_line(exc)})") from None
    model = convert(source, config=config, init="random")
    rebuilt = [layer.name for layer in get_plan(model).converted]
    if rebuilt != recipe["converted"]:
        raise GhostifyError(f"{path}: this ghostify version converts the source differently than the one "
                            f"that wrote the archive ({recipe.get('ghostify_version')}); cannot rebuild it")
    try:
        state = st_load(weights)
    except Exception as exc:
        raise GhostifyError(f"{path}: corrupt weights in the archive ({first_line(exc)})") from None
    for alias, target in recipe.get("aliases", {}).items():
        if target not in state:
            raise GhostifyError(f"{path}: corrupt archive (alias {alias!r} names a missing tensor {target!r})")
        state[alias] = state[target]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise GhostifyError(f"{path}: weights do not fit the rebuilt model: {fit_error(exc)}") from None
    get_plan(model).init = recipe.get("init", "random")
    model.eval()
    return model, recipe


def load(path: str | os.PathLike, trust: bool = False) -> nn.Module:
    """Load a ``.ghost`` archive written by ``ghostify.save`` / ``ghostify convert`` (no pickled code runs)."""
    return load_archive(path, trust=trust)[0]


def resave(model: nn.Module, path: str | os.PathLike, like: str | os.PathLike, *, force: bool = False,
           inputs: Sequence[str | os.PathLike | None] = (), extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (same architecture as the archive ``like``, new weights) as a ``.ghost`` archive
    that keeps ``like``'s recipe and source skeleton (e.g. after ``ghostify finetune``)."""
    like = Path(like)
    try:
        with zipfile.ZipFile(like) as zf:
            recipe = json.loads(zf.read("recipe.json"))
            members = {n: zf.read(n) for n in zf.namelist() if n.startswith("source.")}
    except (zipfile.BadZipFile, OSError, KeyError, json.JSONDecodeError) as exc:
        raise GhostifyError(f"{like}: not a readable ghostify archive ({first_line(exc)})") from None
    plan = get_plan(model)
    if plan is not None and [layer.name for layer in plan.converted] != recipe.get("converted"):
        raise GhostifyError(f"the model's converted layers differ from those of {like}; save it with ghostify.save")
    out = check_output_path(path, [like, *inputs], force, param="path")
    recipe.update(extra or {})
    return _write(out, model, recipe, members)
