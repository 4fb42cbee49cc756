"""Robustness sweep: convert every torchvision classification model and a broad timm CNN list.

For each model (random init, ``pretrained=False``, nothing downloaded):

1. build it and find the smallest input size it accepts (64, 128, 224, then its own config);
2. ``ghostify.convert(model, s=2, d=3)`` with the default policy;
3. forward both at that size: output shape and dtype must be unchanged;
4. count the **eligible** convolutions, i.e. the ``nn.Conv2d`` modules the default policy
   considers: every 2-D convolution of the model except the stem (reads the input image) and
   depthwise ones (``groups == in_channels``), and except convolutions that already sit inside a
   Ghost module (GhostNet's own). The share ghosted is converted / eligible; the reasons of the
   eligible ones left alone are recorded;
5. export the converted model to ONNX and compare onnxruntime with PyTorch (``--skip-onnx`` to
   skip; models over ``--onnx-max-params`` are skipped with that reason, to keep the time budget).

Each model runs in a forked child process with a timeout, so a crash, a hang or an out-of-memory
kill in one model is recorded as that model's error and never stops the sweep.

    nice -n 19 .venv/bin/python bench/zoo_sweep.py                    # everything
    .venv/bin/python bench/zoo_sweep.py --only 'timm:mixnet*' --skip-onnx   # iterate

Writes ``bench/results/zoo_sweep.json`` (with the ``command``) and ``docs/zoo.md``; with ``--only``
the selected rows replace the ones in the existing JSON (the merge is recorded under
``merged_commands``).

``--detection`` runs the other group instead: torchvision's detection (incl. keypoint) and
segmentation models, built offline (``weights_backbone=None``), fed in their own convention
(a list of images for detectors) and checked for the same output structure and tensor shapes
(a detector's instance count varies with its weights). It writes
``bench/results/zoo_sweep_tasks.json``; docs/zoo.md gets its section from that file.

    nice -n 19 .venv/bin/python bench/zoo_sweep.py --detection
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import multiprocessing as mp
import os
import shlex
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# A broad list of timm CNN families, small variants to keep the time down. Each entry is there
# for a feature the converter must survive (noted on the right).
TIMM_MODELS = [
    "resnet18", "resnet18d", "resnet26d",  # ResNet, ResNet-D (avg-pool downsample)
    "resnext26ts", "resnetaa50d", "resnet50_gn",  # grouped, anti-aliased, GroupNorm
    "seresnet18", "ecaresnet26t", "seresnext26d_32x4d", "bat_resnext26ts",  # SE, ECA, attention
    "skresnet18", "skresnext50_32x4d", "resnest14d",  # selective kernel, split attention
    "res2net50_14w_8s", "res2next50",  # Res2Net (split + hierarchical adds)
    "efficientnet_b0", "efficientnet_lite0", "efficientnetv2_rw_t",  # MBConv, SE
    "tf_efficientnet_b0", "tf_efficientnet_lite0", "tf_efficientnetv2_b0",  # "same" padding (Conv2dSame)
    "efficientnet_cc_b0_4e", "tf_efficientnet_cc_b0_4e",  # CondConv (not an nn.Conv2d)
    "mixnet_s", "tf_mixnet_s",  # MixedConv2d (split kernels)
    "mobilenetv2_100", "mobilenetv3_small_100", "tf_mobilenetv3_small_100", "mobilenetv4_conv_small",
    "mnasnet_100", "semnasnet_075", "fbnetc_100", "spnasnet_100", "tinynet_e", "hardcorenas_a",
    "lcnet_050",  # PP-LCNet
    "regnetx_002", "regnety_002", "regnetz_b16",  # RegNet (grouped)
    "rexnet_100", "rexnetr_100",  # ReXNet (channel-padding adds)
    "hrnet_w18_small",  # HRNet (multi-branch fuse)
    "dla34", "dla46_c",  # DLA (tree aggregation)
    "dpn48b", "dpn68",  # DPN (dual path, grouped)
    "cspresnet50", "cspresnext50", "cspdarknet53", "cs3darknet_s", "darknet53", "sedarknet21",  # CSP / Darknet
    "ese_vovnet19b_dw",  # VoVNet
    "densenet121", "densenetblur121d",  # DenseNet (concat), blur pool
    "inception_v3", "xception41", "legacy_xception",  # Inception, Xception
    "nf_resnet26", "nf_regnet_b0", "eca_nfnet_l0",  # NF nets (ScaledStdConv2d)
    "resnetv2_50x1_bit", "resnetv2_50",  # BiT ResNetV2 (StdConv2d), pre-activation
    "repvgg_a0", "mobileone_s0",  # re-parameterisable blocks
    "convnext_atto", "convnext_nano", "inception_next_tiny",  # ConvNeXt family
    "mobilevit_xxs", "mobilevitv2_050", "edgenext_xx_small", "fastvit_t8",  # conv + attention hybrids
    "botnet26t_256",  # bottleneck transformer (fixed size)
    "tresnet_m",  # TResNet (space-to-depth stem, anti-aliasing)
    "ghostnet_100", "ghostnetv2_100", "repghostnet_050",  # Ghost modules already there
    "gernet_s", "selecsls42b", "hgnet_tiny", "hgnetv2_b0", "convmixer_768_32",
]

SIZES = (64, 128, 224)


def torchvision_models() -> list[str]:
    import torchvision

    return [f"torchvision:{n}" for n in torchvision.models.list_models(module=torchvision.models)]


def all_specs() -> list[str]:
    return torchvision_models() + [f"timm:{n}" for n in TIMM_MODELS]


TASK_SIZES = {"detection": (3, 320, 320), "segmentation": (3, 128, 128)}  # a detector resizes its input anyway
TASKS_OUT = ROOT / "bench/results/zoo_sweep_tasks.json"
DEFAULT_OUT = ROOT / "bench/results/zoo_sweep.json"


def task_specs() -> list[str]:
    """torchvision's detection and segmentation models (the ``--detection`` group)."""
    import torchvision

    return [f"torchvision:{n}" for task in ("detection", "segmentation")
            for n in torchvision.models.list_models(module=getattr(torchvision.models, task))]


def task_of(spec: str) -> str | None:
    """"detection" or "segmentation" for a spec of the ``--detection`` group, else None."""
    import torchvision

    name = spec.partition(":")[2]
    return next((t for t in TASK_SIZES if spec.startswith("torchvision:")
                 and name in torchvision.models.list_models(module=getattr(torchvision.models, t))), None)


# -- one model ----------------------------------------------------------------------------------
def _build(spec: str):
    from ghostify.io.specs import load_model

    return load_model(spec).model


def _config_size(model) -> tuple[int, int, int] | None:
    from ghostify.io.specs import _config_input_size

    return _config_input_size(model)


def _pick_input_size(model, torch, task: str | None = None) -> tuple[tuple[int, int, int], Any]:
    """The smallest size from SIZES (then the model's config size) the model accepts; a task model's own size."""
    from ghostify.forward import example_input

    cfg = _config_size(model)
    candidates = [(3, s, s) for s in SIZES] if task is None else [TASK_SIZES[task]]
    if cfg is not None and cfg not in candidates:
        candidates.append(tuple(cfg))
    last: Exception | None = None
    for size in candidates:
        try:
            x = example_input(model, size)  # a batch, or a list of images for a detector
            with torch.no_grad():
                y = model(x)
            return size, (x, y)
        except Exception as exc:  # the model rejects this size; try the next one
            last = exc
    raise RuntimeError(f"the original model rejected every input size tried ({candidates}): {last}")


def _eligible(original, plan) -> dict[str, Any]:
    """Eligible convolutions (see the module docstring) and the reasons of those not ghosted."""
    from torch import nn

    from ghostify.fx.trace import is_ghost_module

    inside_ghost: set[str] = set()
    for name, mod in original.named_modules():
        if is_ghost_module(mod):
            inside_ghost.update(f"{name}.{sub}" if name else sub for sub, _ in mod.named_modules() if sub)
    by_name = {layer.name: layer for layer in plan.layers}
    counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    eligible = converted = 0
    for name, mod in original.named_modules():
        if not isinstance(mod, nn.Conv2d):
            continue
        counts["conv2d"] += 1
        if name in inside_ghost:
            counts["inside_ghost_module"] += 1
            continue
        if mod.groups > 1 and mod.groups == mod.in_channels:
            counts["depthwise"] += 1
            continue
        layer = by_name.get(name)
        if layer is not None and layer.reason and layer.reason.startswith("stem"):
            counts["stem"] += 1
            continue
        eligible += 1
        if layer is None:
            reasons["not reached by the pass (inside a module traced as a leaf, or not called)"] += 1
        elif layer.converted:
            converted += 1
        else:
            reasons[_reason_key(layer.reason)] += 1
    # convolution layers the pass does not match at all (not nn.Conv2d: Conv1d, timm's CondConv2d)
    other: Counter[str] = Counter(type(m).__name__ for m in original.modules()
                                  if "Conv" in type(m).__name__ and not isinstance(m, nn.Conv2d)
                                  and isinstance(getattr(m, "weight", None), nn.Parameter))
    return {"conv2d": counts["conv2d"], "stem": counts["stem"], "depthwise": counts["depthwise"],
            "inside_ghost_module": counts["inside_ghost_module"], "eligible": eligible, "ghosted": converted,
            "share": (converted / eligible) if eligible else None, "other_conv_layers": dict(other),
            "not_ghosted_reasons": dict(reasons.most_common())}


def _reason_key(reason: str | None) -> str:
    """Group per-layer reasons (strip the layer-specific figures)."""
    import re

    reason = reason or "unknown"
    reason = re.sub(r"n=\d+", "n", reason)
    reason = re.sub(r"r_s=[\d.]+", "r_s", reason)
    return reason


def _onnx_parity(ghost, size, torch, exporter: str, task: str | None = None) -> dict[str, Any]:
    """Helper B's ``ghostify.export.export_onnx`` (deployment form, parity checked in onnxruntime).

    For the ``--detection`` group, two diagnostics say where a failed check comes from:
    ``deploy_rel_diff`` compares the deployment form with the training form in PyTorch alone (no
    ONNX), and for a detector ``onnx_sorted_scores_rel_diff`` compares onnxruntime's scores with
    PyTorch's after sorting both (tied detections may come out in either order); for a
    segmentation model ``deploy_rel_diff_f64`` is the first one in float64.
    """
    from ghostify.export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        res = export_onnx(ghost, path, tuple(size), deploy=True, check=True, exporter=exporter,
                          keep_failed=task is not None)
        extra = _task_diagnostics(ghost, path, size, torch, task) if task is not None else {}
    scale = res.max_abs_error / res.max_rel_error if res.max_rel_error else None  # max |torch output|
    return {"onnx_exporter": res.exporter, "onnx_export_s": res.seconds, "onnx_max_abs_diff": res.max_abs_error,
            "onnx_output_scale": scale, "onnx_compared_values": res.compared_values,
            "onnx_rel_diff": res.max_rel_error, "onnx_rtol": res.rtol, "onnx_ok": bool(res.passed),
            **({"onnx_fallback": res.fallback_reason} if res.fallback_reason else {}), **extra}


def _task_diagnostics(ghost, path: str, size, torch, task: str) -> dict[str, Any]:
    """See :func:`_onnx_parity`; the input is export_onnx's own (seed 0 + batch 1)."""
    import copy

    import numpy as np

    import ghostify
    from ghostify.forward import model_input, numpy_outputs
    from ghostify.runtime.session import onnx_session, relative_error

    x = torch.randn((1, *size), generator=torch.Generator().manual_seed(1))
    reference = numpy_outputs(ghost, x)
    out = {"deploy_rel_diff": relative_error(numpy_outputs(ghostify.deploy(ghost), x), reference)[1]}
    if task == "segmentation":  # the same in float64: near 0 when float32 rounding alone made the difference
        g64 = copy.deepcopy(ghost).double()
        out["deploy_rel_diff_f64"] = relative_error(numpy_outputs(ghostify.deploy(g64), x.double()),
                                                    numpy_outputs(g64, x.double()))[1]
    if task == "detection" and os.path.exists(path):
        with torch.no_grad():
            keys = list(ghost(model_input(ghost, x))[0].keys())
        sess = onnx_session(Path(path))
        ort = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
        i = keys.index("scores")
        out["onnx_sorted_scores_rel_diff"] = relative_error([np.sort(ort[i])], [np.sort(reference[i])])[1]
    return out


def _fill_zero_weights(model, torch) -> list[str]:
    """Give all-zero weight matrices small random values (torchvision's ViT zero-initialises its head).

    A model whose output is identically zero would pass any parity check; with these values the
    ONNX comparison sees real logits. Returns the names filled.
    """
    filled = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and not bool(p.any()):
                p.normal_(0.0, 0.02)
                filled.append(name)
    return filled


def _recalibrate_batchnorm(model, x, torch) -> int:
    """Running statistics from a few random batches, so eval-mode activations keep a sane scale.

    Freshly built models carry BatchNorm's default statistics (mean 0, var 1); through dozens of
    layers in eval mode their activations can shrink to ~1e-12, and a parity check on outputs
    that small compares nothing. Returns the number of BatchNorm layers recalibrated.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats]
    if not norms:
        return 0
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
        m.train()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(8, *x.shape[1:], generator=gen, dtype=x.dtype))
    model.eval()
    return len(norms)


def _recalibrate_batchnorm_only(model, size, torch) -> int:
    """As :func:`_recalibrate_batchnorm`, with only the BatchNorm layers in train mode.

    A detector in train mode wants targets and returns losses; with the model in eval mode and
    its BatchNorms in train mode it runs as at inference and the BatchNorms update their statistics.
    """
    from ghostify.forward import example_input

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(4):
            model(example_input(model, size, batch=4, generator=gen))
    model.eval()
    return len(norms)


def _keep_every_detection(model) -> list[str]:
    """Score thresholds of a detector set to 0: with random weights no class scores above torchvision's
    0.05, so it would return no box and the ONNX comparison would compare nothing."""
    names = []
    for name, mod in model.named_modules():
        if isinstance(getattr(mod, "score_thresh", None), float):
            mod.score_thresh = 0.0
            names.append(f"{name}.score_thresh" if name else "score_thresh")
    return names


def _same_output(y0, y1, task: str | None) -> tuple[bool, Any]:
    """(kept, what): a classifier's shape and dtype; a task model's structure and tensor shapes."""
    from ghostify.forward import IMAGES, describe_output

    if task is None:
        return tuple(y0.shape) == tuple(y1.shape) and y0.dtype == y1.dtype, list(y0.shape)
    convention = IMAGES if task == "detection" else "batch"
    before, after = describe_output(y0, convention), describe_output(y1, convention)
    return before == after, before


def run_one(spec: str, skip_onnx: bool, onnx_max_params: float, exporter: str) -> dict[str, Any]:
    """Everything for one model; raises on failure (the parent records the error)."""
    import torch

    import ghostify
    from ghostify.layers.ghost import GhostModule

    torch.manual_seed(0)
    warnings.filterwarnings("ignore")
    row: dict[str, Any] = {"model": spec}
    stage = "build"
    try:
        t0 = time.perf_counter()
        model = _build(spec).eval()
        row["zero_weights_filled"] = _fill_zero_weights(model, torch)
        row["build_s"] = round(time.perf_counter() - t0, 2)
        row["params"] = sum(p.numel() for p in model.parameters())
        stage = "input size"
        task = task_of(spec)
        if task == "detection":
            row["score_thresh_zeroed"] = _keep_every_detection(model)
        size, (x, y0) = _pick_input_size(model, torch, task)
        row["input_size"] = list(size)
        if task is not None:
            row["task"] = task
        stage = "convert"
        t1 = time.perf_counter()
        ghost = ghostify.convert(model, s=2, d=3).eval()
        row["convert_s"] = round(time.perf_counter() - t1, 2)
        plan = ghostify.get_plan(ghost)
        row["mode"] = plan.mode
        row["lost_optimizations"] = list(plan.lost_optimizations)
        row["ghost_modules"] = sum(isinstance(m, GhostModule) for m in ghost.modules())
        row.update(_eligible(model, plan))
        stage = "forward"
        t2 = time.perf_counter()
        with torch.no_grad():
            y1 = ghost(x)
        row["forward_s"] = round(time.perf_counter() - t2, 2)
        row["shape_kept"], row["output_shape"] = _same_output(y0, y1, task)
        if not row["shape_kept"]:
            row["error"] = f"output {_same_output(y1, y1, task)[1]} differs from {row['output_shape']}"
        stage = "onnx"
        row["batchnorm_recalibrated"] = (_recalibrate_batchnorm(ghost, x, torch) if task is None
                                         else _recalibrate_batchnorm_only(ghost, size, torch))
        if skip_onnx:
            row["onnx_ok"] = None
            row["onnx_skipped"] = "--skip-onnx"
        elif row["params"] > onnx_max_params:
            row["onnx_ok"] = None
            row["onnx_skipped"] = f"over {onnx_max_params / 1e6:.0f}M parameters (time budget)"
        else:
            try:
                with torch.no_grad():
                    row.update(_onnx_parity(ghost, size, torch, exporter, task))
            except Exception as exc:
                row["onnx_ok"] = False
                row["onnx_error"] = f"{type(exc).__name__}: {_line(exc)}"
        row["total_s"] = round(time.perf_counter() - t0, 2)
        return row
    except Exception as exc:
        row["error"] = f"{stage}: {type(exc).__name__}: {_line(exc)}"
        row["traceback_tail"] = traceback.format_exc().strip().splitlines()[-3:]
        return row


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else "")[:300]


def _child(conn, spec: str, skip_onnx: bool, onnx_max_params: float, exporter: str, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        conn.send(run_one(spec, skip_onnx, onnx_max_params, exporter))
    except BaseException as exc:  # never let the child die silently
        conn.send({"model": spec, "error": f"child: {type(exc).__name__}: {_line(exc)}"})
    finally:
        conn.close()


def run_isolated(spec: str, args: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("fork")  # the parent already imported torch/timm: forking is cheap
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, spec, args.skip_onnx, args.onnx_max_params, args.onnx_exporter,
                                             args.threads))
    t0 = time.perf_counter()
    proc.start()
    child.close()
    row: dict[str, Any] | None = None
    if parent.poll(args.timeout):
        try:
            row = parent.recv()
        except EOFError:
            row = None
    proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join()
    if row is None:
        if time.perf_counter() - t0 >= args.timeout:
            row = {"model": spec, "error": f"timeout: more than {args.timeout:.0f} s"}
        else:
            row = {"model": spec, "error": f"child process died (exit code {proc.exitcode}; killed for memory?)"}
    return row


# -- summary and markdown -------------------------------------------------------------------------
def passed(row: dict[str, Any]) -> bool:
    """The issue's bar: converts, shape kept, and >= 50% of eligible convolutions ghosted."""
    if row.get("error") or not row.get("shape_kept"):
        return False
    share = row.get("share")
    return share is None or share >= 0.5  # no eligible convolution: vacuously true (listed apart)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    tasks = any("task" in r for r in rows)
    for suite in (TASK_SIZES if tasks else ("torchvision", "timm")):
        sel = [r for r in rows if (r.get("task") == suite if tasks else r["model"].startswith(suite + ":"))]
        if not sel:
            continue
        ok = [r for r in sel if passed(r)]
        onnx = [r for r in sel if r.get("onnx_ok") is not None]
        out[suite] = {
            "models": len(sel),
            "converted_shape_kept": sum(1 for r in sel if not r.get("error") and r.get("shape_kept")),
            "pass": len(ok),
            "pass_share": round(len(ok) / len(sel), 4),
            "with_ghost_modules": sum(1 for r in sel if (r.get("ghost_modules") or 0) > 0),
            "no_eligible_conv": [r["model"] for r in sel if not r.get("error") and r.get("eligible") == 0],
            "failing": {r["model"]: r.get("error") or f"{_fmt_share(r)} of eligible convolutions ghosted (< 50%): "
                        + "; ".join(f"{k} ×{v}" for k, v in r.get("not_ghosted_reasons", {}).items())
                        for r in sel if not passed(r)},
            "onnx_checked": len(onnx),
            "onnx_ok": sum(1 for r in onnx if r["onnx_ok"]),
            "onnx_failing": {r["model"]: r.get("onnx_error") or f"rel diff {r.get('onnx_rel_diff')}"
                             for r in onnx if not r["onnx_ok"]},
        }
    return out


def _fmt_share(row: dict[str, Any]) -> str:
    if row.get("share") is None:
        return "n/a (0 eligible)" if row.get("eligible") == 0 else "—"
    return f"{100 * row['share']:.0f}% ({row['ghosted']}/{row['eligible']})"


def _fmt_onnx(row: dict[str, Any]) -> str:
    if row.get("onnx_ok") is None:
        return f"skipped: {row['onnx_skipped']}" if row.get("onnx_skipped") else "—"
    if row["onnx_ok"] and row.get("onnx_compared_values") == 0:
        return "ok but vacuous: no output value to compare"
    if row["onnx_ok"]:
        return f"ok ({row['onnx_rel_diff']:.1e})"
    why = "FAIL: " + (row.get("onnx_error") or f"rel diff {row.get('onnx_rel_diff'):.1e}")[:80]
    hints = [f"{label} {row[key]:.1e}" for key, label in (("onnx_sorted_scores_rel_diff", "sorted scores"),
                                                           ("deploy_rel_diff", "deploy form vs torch"),
                                                           ("deploy_rel_diff_f64", "in float64"))
             if row.get(key) is not None]
    return why + (f" ({'; '.join(hints)})" if hints else "")


def markdown(result: dict[str, Any]) -> str:
    rows = result["results"]
    lines = [
        "# Model zoo sweep",
        "",
        "Generated by `bench/zoo_sweep.py` (do not edit by hand). Command:",
        "",
        f"    {result['command']}",
        *(["", "Rows re-run and merged afterwards with:", ""] + [f"    {c}" for c in result.get("merged_commands", [])]
          if result.get("merged_commands") else []),
        "",
        f"Date: {result['date']}; torch {result['versions']['torch']}, torchvision {result['versions']['torchvision']},"
        f" timm {result['versions']['timm']}. Every model is built with random weights (no download), converted with"
        " `ghostify.convert(model, s=2, d=3)` (default policy) and run at the smallest of 64, 128, 224 px (or its"
        " configured size) that the original accepts.",
        "",
        "**Eligible** convolutions are the `nn.Conv2d` modules the default policy considers: all of them except the"
        " stem (it reads the image), depthwise ones (`groups == in_channels`) and those already inside a Ghost module."
        " **Ghosted** = eligible and converted. A model passes when it converts, keeps its output shape and dtype,"
        " and ghosts at least 50% of its eligible convolutions. ONNX: the converted model exported and run in"
        " onnxruntime by `ghostify.export.export_onnx(..., deploy=True, check=True)`; its relative error"
        " (max |diff| / max |output|) must be ≤ its rtol (1e-4). Before the export, BatchNorm statistics are"
        " re-estimated on random inputs and all-zero weight matrices (torchvision's ViT head) get small random"
        " values, so the outputs compared are not vanishingly small; rows measured that way carry"
        " `batchnorm_recalibrated` and `onnx_output_scale` (max |output|) in the JSON. Earlier rows without them"
        " were checked on raw random models, where some outputs had collapsed to ~1e-12; every row whose"
        " output scale was under 1e-6 was re-run this way.",
        *(["", "**Partial**: the sweep was interrupted; only the rows below were measured."]
          if result.get("partial") else []),
        "",
        "## Summary",
        "",
        "| suite | models | pass | converted, shape kept | with Ghost modules | ONNX ok / checked |",
        "|---|---|---|---|---|---|",
    ]
    lines += [_summary_row(suite, s) for suite, s in result["summary"].items()]
    for suite, s in result["summary"].items():
        if s["no_eligible_conv"]:
            lines += ["", f"{suite}: no eligible convolution (nothing for the default policy to convert; the only"
                      f" convolution is the patch-embedding stem or depthwise): {', '.join(s['no_eligible_conv'])}."]
        if s["failing"]:
            lines += ["", f"{suite}: failing the bar:", ""] + [f"- `{m}`: {why}" for m, why in s["failing"].items()]
        if s["onnx_failing"]:
            lines += ["", f"{suite}: ONNX parity failures:", ""] + [f"- `{m}`: {why}" for m, why in
                                                                      s["onnx_failing"].items()]
    lines += ["", "## Per model", "",
              "| model | input | mode | convs | stem / dw / in Ghost | ghosted of eligible | why not ghosted |"
              " shape kept | ONNX | s |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_table_row(r, task=False) for r in rows]
    return "\n".join(lines) + "\n"


def _summary_row(name: str, s: dict) -> str:
    """One suite's (or task's) row of a summary table."""
    return (f"| {name} | {s['models']} | {s['pass']} ({100 * s['pass_share']:.1f}%) | "
            f"{s['converted_shape_kept']} | {s['with_ghost_modules']} | {s['onnx_ok']} / {s['onnx_checked']} |")


def _table_row(r: dict, task: bool) -> str:
    """One model's markdown row of the per-model tables (with a task column for --detection)."""
    lead = f"| `{r['model']}` | " + (f"{r.get('task', '')} | " if task else "")
    if r.get("error") and "conv2d" not in r:
        return lead + f"| | | | | **error**: {r['error'][:160]} | ✗ | | |"
    why = "; ".join(f"{k} ×{v}" for k, v in r.get("not_ghosted_reasons", {}).items())
    if r.get("error"):
        why = f"**error**: {r['error'][:160]}" + (f"; {why}" if why else "")
    size = "×".join(str(v) for v in r.get("input_size", [])[1:])
    return (lead + f"{size} | {r.get('mode', '')} | {r.get('conv2d', '')} | "
            f"{r.get('stem', 0)} / {r.get('depthwise', 0)} / {r.get('inside_ghost_module', 0)} | {_fmt_share(r)} | "
            f"{why.replace('|', '/')} | {'✓' if r.get('shape_kept') else '✗'} | {_fmt_onnx(r).replace('|', '/')} | "
            f"{r.get('total_s', '')} |")


def tasks_markdown(result: dict[str, Any]) -> str:
    """The ``--detection`` group's section of docs/zoo.md."""
    lines = [
        "## Detection and segmentation (`--detection`)",
        "",
        "Generated by `bench/zoo_sweep.py --detection` from `bench/results/zoo_sweep_tasks.json`. Command:",
        "",
        f"    {result['command']}",
        *(["", "Rows re-run and merged afterwards with:", ""] + [f"    {c}" for c in result.get("merged_commands", [])]
          if result.get("merged_commands") else []),
        "",
        f"Date: {result['date']}; torch {result['versions']['torch']}, torchvision {result['versions']['torchvision']}."
        " torchvision's detection (keypoint R-CNN included) and segmentation models, built with random weights and"
        " `weights_backbone=None` (nothing downloaded), converted with `ghostify.convert(model, s=2, d=3)`."
        " Detectors are fed a list of one 3×320×320 image (they resize it to their own size) and return a list of"
        " dicts; segmentation models a 3×128×128 batch, returning a dict (`out`, `aux`). **Output kept** = the same"
        " structure, keys and tensor shapes on the same input, except a detector's instance count N (it depends on"
        " the weights). Convolution counts and the ghosted share as in the classification sweep above. ONNX: the"
        " converted model's deployment form through `export_onnx` (its tensors flattened in order), compared with"
        " PyTorch after re-estimating BatchNorm statistics with only the BatchNorm layers in train mode (a detector"
        " in train mode wants targets); with random weights a detector's scores can tie, and the order of tied"
        " detections is then arbitrary. Their score thresholds are set to 0 first (`score_thresh_zeroed` in the"
        " JSON): with random weights no class scores above torchvision's 0.05, and a detector returning no box"
        " would make the comparison vacuous (`onnx_compared_values` counts the values compared).",
        "",
        "Where a parity failure comes from (the diagnostics in brackets, from the JSON): for the detectors at their"
        " 800 px size, near-tied random scores let rounding-level differences change which boxes NMS and top-k keep"
        " and in which order, so PyTorch's own deployment form already differs from the training form in several"
        " (`deploy_rel_diff`, no ONNX involved), and sorting the scores shrinks the difference"
        " (`onnx_sorted_scores_rel_diff`). For the ResNet segmentation models the deployment form differs from the"
        " training form in float32 in PyTorch by about the ONNX error and agrees to ~1e-8 in float64"
        " (`deploy_rel_diff_f64`): float32 rounding of the folded BatchNorm, amplified through random dilated"
        " ResNets, not the export. With trained weights neither applies; this sweep cannot check that offline.",
        *(["", "**Partial**: the sweep was interrupted; only the rows below were measured."]
          if result.get("partial") else []),
        "",
        "| task | models | pass | converted, output kept | with Ghost modules | ONNX ok / checked |",
        "|---|---|---|---|---|---|",
    ]
    lines += [_summary_row(task, s) for task, s in result["summary"].items()]
    for task, s in result["summary"].items():
        if s["failing"]:
            lines += ["", f"{task}: failing the bar:", ""] + [f"- `{m}`: {why}" for m, why in s["failing"].items()]
        if s["onnx_failing"]:
            lines += ["", f"{task}: ONNX not exported or parity failed:", ""] + [
                f"- `{m}`: {str(why)[:300]}" for m, why in s["onnx_failing"].items()]
    lines += ["", "| model | task | input | mode | convs | stem / dw / in Ghost | ghosted of eligible |"
              " why not ghosted | output kept | ONNX | s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_table_row(r, task=True) for r in result["results"]]
    return "\n".join(lines) + "\n"


def docs_markdown(args: argparse.Namespace, result: dict[str, Any]) -> str:
    """docs/zoo.md: the classification sweep, then the ``--detection`` group (each from its own JSON)."""
    if getattr(args, "detection", False):
        classification = json.loads(DEFAULT_OUT.read_text()) if DEFAULT_OUT.exists() else None
        tasks: dict[str, Any] | None = result
    else:
        classification = result
        tasks = json.loads(TASKS_OUT.read_text()) if TASKS_OUT.exists() else None
    parts = [markdown(classification)] if classification is not None else []
    if tasks is not None:
        parts.append(tasks_markdown(tasks))
    exports = sorted(ROOT.glob("bench/results/export_*.json"))
    if exports:
        parts.append(exports_markdown([json.loads(p.read_text()) for p in exports]))
    return "\n".join(parts)


def exports_markdown(exports: list[dict[str, Any]]) -> str:
    """Full-size exports of converted task models (``ghostify export --json bench/results/export_NAME.json``)."""
    lines = ["## Full-size exports", "",
             "Converted with `ghostify convert torchvision:NAME` (s=2, d=3, random weights; it writes"
             " `NAME.ghost-s2d3.ghost`), then exported from that archive by the command in each row, at the model's"
             " default input size; parity as in the sweep (no BatchNorm re-estimation here).", "",
             "| archive | input | exporter, opset | max rel error (rtol) | values compared | command |",
             "|---|---|---|---|---|---|"]
    for e in exports:
        size = "×".join(str(v) for v in e["input_size"])
        verdict = "ok" if e.get("passed") else "FAIL"
        lines.append(f"| `{e['spec']}` | {size} | {e['exporter']}, {e['opset']} | {verdict} {e['max_rel_error']:.1e}"
                     f" ({e['rtol']:g}) | {e.get('compared_values')} | `{e['command']}` |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[],
                        help="spec glob(s) to run, e.g. 'timm:mixnet*' (repeatable); merges into the JSON")
    parser.add_argument("--skip-onnx", action="store_true", help="skip the ONNX parity check")
    parser.add_argument("--onnx-exporter", default="torchscript", choices=["auto", "dynamo", "torchscript"],
                        help="exporter for ghostify.export.export_onnx (default torchscript: ~5x faster than "
                             "dynamo, which matters for the time budget)")
    parser.add_argument("--onnx-max-params", type=float, default=60e6,
                        help="skip ONNX above this many parameters (default 60e6, for the time budget)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per model (default 300)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per model")
    parser.add_argument("--merge-from", type=Path, action="append", default=[],
                        help="run nothing: replace --out's rows with those of this sweep JSON (repeatable)")
    parser.add_argument("--render", action="store_true", help="run nothing: regenerate --md from --out")
    parser.add_argument("--detection", action="store_true",
                        help="the other group: torchvision's detection and segmentation models (default --out "
                             "bench/results/zoo_sweep_tasks.json)")
    parser.add_argument("--out", type=Path, default=None, help="the JSON (default bench/results/zoo_sweep.json)")
    parser.add_argument("--md", type=Path, default=ROOT / "docs/zoo.md")
    args = parser.parse_args(argv)
    args.out = args.out or (TASKS_OUT if args.detection else DEFAULT_OUT)
    niceness = os.nice(0)  # recorded as run (it only changes scheduling, never the figures)
    command = ((f"nice -n {niceness} " if niceness else "") + ".venv/bin/python "
               + " ".join(shlex.quote(a) for a in ["bench/zoo_sweep.py", *sys.argv[1:]]))

    import timm  # noqa: F401  (imported once in the parent; children fork with it loaded)
    import torchvision  # noqa: F401

    if args.render:  # rewrite the markdown (and the summary) from the JSON, measuring nothing
        result = json.loads(args.out.read_text())
        result["summary"] = summarize(result["results"])
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        args.md.write_text(docs_markdown(args, result))
        return 0
    if args.merge_from:  # combine sweeps run separately (e.g. torchvision and timm in parallel)
        previous = json.loads(args.out.read_text())
        rows = []
        for path in args.merge_from:
            other = json.loads(path.read_text())
            rows += other["results"]
            previous["merged_commands"] = (previous.get("merged_commands", []) + [other["command"]]
                                           + other.get("merged_commands", []))
        result = _write(args, command, rows, previous, 0.0, partial=False)
        print(json.dumps(result["summary"], indent=2))
        return 0

    specs = task_specs() if args.detection else all_specs()
    if args.only:
        specs = [s for s in specs if any(fnmatch.fnmatchcase(s, g) for g in args.only)]
        if not specs:
            parser.error(f"--only {args.only} matches no model")
    previous: dict[str, Any] | None = None
    if args.only and args.out.exists():
        previous = json.loads(args.out.read_text())

    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    result: dict[str, Any] = {}
    for i, spec in enumerate(specs, 1):
        row = run_isolated(spec, args)
        rows.append(row)
        status = "ok" if passed(row) else "FAIL"
        detail = row.get("error") or f"{_fmt_share(row)}, onnx {_fmt_onnx(row)}"
        print(f"[{i}/{len(specs)}] {spec}: {status} {detail} ({time.perf_counter() - t_start:.0f} s)",
              file=sys.stderr, flush=True)
        # written after every model, so an interrupted sweep keeps what it measured
        result = _write(args, command, rows, previous, time.perf_counter() - t_start, partial=i < len(specs))
    print(json.dumps(result.get("summary", {}), indent=2))
    return 0


def _write(args: argparse.Namespace, command: str, rows: list[dict[str, Any]], previous: dict[str, Any] | None,
           wall_s: float, partial: bool) -> dict[str, Any]:
    import torch
    import torchvision

    result: dict[str, Any] = {
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                     "timm": sys.modules["timm"].__version__},
        "settings": {"s": 2, "d": 3, "sizes_tried": [list(v) for v in TASK_SIZES.values()] if args.detection
                     else list(SIZES), "timeout_s": args.timeout,
                     "onnx_max_params": args.onnx_max_params, "skip_onnx": args.skip_onnx,
                     "onnx_exporter": args.onnx_exporter},
        "wall_s": round(wall_s, 1),
        "partial": partial,
    }
    if previous is not None:
        merged = {r["model"]: r for r in previous["results"]}
        merged.update({r["model"]: r for r in rows})
        every = task_specs() if args.detection else all_specs()
        order = [s for s in every if s in merged]
        rows = [merged[s] for s in order]
        for key in ("command", "date", "settings", "wall_s"):
            result[key] = previous.get(key)
        result["partial"] = partial or any(s not in merged for s in every)
        result["merged_commands"] = previous.get("merged_commands", []) + [command]
    result["summary"] = summarize(rows)
    result["results"] = rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, args.out)
    args.md.parent.mkdir(parents=True, exist_ok=True)
    args.md.write_text(docs_markdown(args, result))
    return result

if __name__ == "__main__":
    raise SystemExit(main())
