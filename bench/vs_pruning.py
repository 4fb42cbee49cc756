"""ghostify against channel pruning (Torch-Pruning) at the same MACs: latency, and accuracy on Fashion-MNIST.

For ResNet-18, ResNet-50 and MobileNetV2 (torchvision, random init, 3x224x224) and the Fashion-MNIST CNN
of ``bench/transfer_fmnist.py``: ghostify at s = 2, 3, 4 (d = 3, ``ghostify.convert``) beside
Torch-Pruning at the same MACs. The pruning ratio (uniform across layers, Torch-Pruning's default) is
found by bisection so that the pruned model's MACs match each Ghost model's MACs; channels are rounded
to multiples of ``--round-to`` (8, and 16); the classifier (the last Linear) is never pruned.
Importance: magnitude (``MagnitudeImportance(p=2)``) and Taylor (``TaylorImportance``, a backward pass
on the 256 calibration images against the baseline's own predictions, so no label is read). With a
uniform ratio the criterion chooses *which* channels go, not how many: the pruned architecture, its
MACs, parameters and latency are the same for every criterion; only accuracy differs.

Latency: every model of a row group exported by ``ghostify.export.export_onnx`` (deployment form,
parity-checked) and timed interleaved, run by run, in one ``ghostify.runtime.latency.time_onnx`` call
(onnxruntime CPU EP, ORT_ENABLE_ALL, 1 thread, batch 1); medians, speed-ups are medians of per-run
ratios against the original timed in the same run.

Fashion-MNIST accuracy (by default the CPU budget mode of ``bench/transfer_fmnist.py``: 20,000 training
images, baseline 3 epochs, a fixed 5,000-image test subset; ``--train-samples 60000 --test-samples
10000 --baseline-epochs 8`` is the whole data set and a baseline trained to about 93 %), KD T=4
alpha=0.9 SGD lr 0.02 batch 32, warm-up + cosine fitted to each budget: a run of 200 steps, and a run
of one epoch (625 steps; 1,875 on the whole data set); the epoch run's
test at step 200, mid-schedule near the peak LR, is kept as ``epoch_run_at_step_200``):
zero-shot (Ghost: ``init="transfer"`` with 256 calibration images; pruned as-is and after
BatchNorm re-estimation on the same 256 images), after 200 KD steps and after 1 epoch; the pruned
students start from the BN-re-estimated weights. Mean over seeds (calibration set, Taylor batch, KD
order) with min..max; one baseline (seed 0) is the teacher of every run. Besides the pruned models at
each Ghost model's MACs, ``--fmnist-extra`` adds pruned models at given ratios (default: the uniform
round_to 8 and 16 models nearest the baseline), so that the pruning front between the baseline and
s=2 is measured, not interpolated across; ``round_to:ratio:12`` prunes only convolutions 1 and 2 (a
non-uniform model, to put points where the uniform ratio has none). ``--methods ghost-feat`` distills
the Ghost students with the per-layer feature term as well (``--feature-weight``; a pruned student has
other widths than the teacher, so it cannot have that term).

Needs Torch-Pruning (``pip install 'ghostify[compare]'``). The work is split into pieces so that each
holds the shared benchmark lock briefly; each piece updates its part of the JSON:

    flock /tmp/ghostify-bench.lock python bench/vs_pruning.py --only latency --models resnet18
    flock /tmp/ghostify-bench.lock python bench/vs_pruning.py --only latency-aware --models mobilenet_v2
    flock /tmp/ghostify-bench.lock python bench/vs_pruning.py --only fmnist-base
    flock /tmp/ghostify-bench.lock python bench/vs_pruning.py --only fmnist-latency
    flock /tmp/ghostify-bench.lock python bench/vs_pruning.py --only fmnist --seeds 0 --methods ghost
    python bench/vs_pruning.py --only report          # table, bars, plot (no timing, no training)

A second CPU: ``--only fmnist-latency --latency-section NAME --fmnist-repeats 5`` times the same
architectures there (``fmnist.latency_on.NAME``), and the report judges the bar against those
latencies too, with the accuracy runs made against the first CPU's section.
"""

from __future__ import annotations

import argparse
import copy
import fcntl
import json
import platform
import shlex
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ghostify  # noqa: E402
from bench.transfer_fmnist import calibration_batch, kd_config, test_split, train_baseline, vgg_small  # noqa: E402
from ghostify.data.specs import open_data  # noqa: E402
from ghostify.export import export_onnx  # noqa: E402
from ghostify.report import count_macs, count_params  # noqa: E402
from ghostify.runtime import cpu_info  # noqa: E402
from ghostify.runtime.latency import percentiles, time_onnx  # noqa: E402
from ghostify.train import evaluate, finetune  # noqa: E402

INSTALL = "Torch-Pruning is not installed: pip install 'ghostify[compare]'  (or: pip install 'torch-pruning>=1.6')"
MODELS = ("resnet18", "resnet50", "mobilenet_v2")
FMNIST = "fashion-mnist:/usr/share/datasets/fashion-mnist"
FMNIST_SIZE = (1, 28, 28)
IMAGENET_SIZE = (3, 224, 224)
CRITERIA = ("magnitude", "taylor")
PIECES = ("latency", "latency-aware", "fmnist-base", "fmnist-latency", "fmnist", "report")


def require_tp() -> Any:
    try:
        import torch_pruning as tp
    except ImportError:
        raise SystemExit(INSTALL) from None
    return tp


# --------------------------------------------------------------------------------------------- counting


def macs(model: nn.Module, size: Sequence[int]) -> int:
    return count_macs(model, torch.zeros(1, *size)).total


def classifier(model: nn.Module) -> nn.Linear:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


# --------------------------------------------------------------------------------------------- pruning


def importance(tp: Any, criterion: str) -> Any:
    if criterion == "magnitude":
        return tp.importance.MagnitudeImportance(p=2)
    if criterion == "taylor":
        return tp.importance.TaylorImportance()
    if criterion == "fpgm":
        return tp.importance.FPGMImportance(p=2)
    raise SystemExit(f"unknown criterion {criterion!r} (magnitude, taylor, fpgm)")


def prune(model: nn.Module, size: Sequence[int], ratio: float, round_to: int | None, criterion: str = "magnitude",
          batch: torch.Tensor | None = None, layers: Sequence[int] | None = None) -> nn.Module:
    """A pruned copy of ``model``: ``ratio`` of the channels of every prunable group, the classifier kept.

    ``layers``: only the outputs of these convolutions (indices in module order) are pruned; None: all.
    Taylor importance needs gradients: a backward pass on ``batch`` against the model's own predictions.
    """
    tp = require_tp()
    model = copy.deepcopy(model).eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    kept = [] if layers is None else [m for i, m in enumerate(convs) if i not in layers]
    pruner = tp.pruner.BasePruner(model, torch.zeros(1, *size), importance=importance(tp, criterion),
                                  pruning_ratio=ratio, ignored_layers=[classifier(model), *kept], round_to=round_to)
    if criterion == "taylor":
        if batch is None:
            raise ValueError("Taylor importance needs a batch")
        model.zero_grad()
        logits = model(batch)
        F.cross_entropy(logits, logits.argmax(1)).backward()
    pruner.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


def match_macs(model: nn.Module, size: Sequence[int], target: int, round_to: int | None,
               iters: int = 12) -> tuple[float, int]:
    """The uniform pruning ratio whose MACs come closest to ``target`` (bisection), and those MACs."""
    lo, hi = 0.0, 0.95
    best: tuple[float, float, int] | None = None  # (|log ratio|, pruning ratio, macs)
    for _ in range(iters):
        mid = (lo + hi) / 2
        got = macs(prune(model, size, mid, round_to), size)
        miss = abs(np.log(got / target))
        if best is None or miss < best[0]:
            best = (miss, mid, got)
        if got > target:
            lo = mid
        else:
            hi = mid
    return round(best[1], 5), best[2]


# --------------------------------------------------------------------------------------------- timing


def export_all(models: dict[str, nn.Module], size: Sequence[int], work: Path) -> dict[str, dict[str, Any]]:
    """Each model through ``export_onnx`` (deployment form, parity against torch)."""
    info = {}
    for name, model in models.items():
        res = export_onnx(model, work / f"{name}.onnx", size, deploy=True)
        if not res.passed:
            raise SystemExit(f"{name}: the ONNX export failed its parity check (rel error {res.max_rel_error})")
        info[name] = {"exporter": res.exporter, "max_rel_error": res.max_rel_error}
    return info


def time_all(names: Sequence[str], work: Path, runs: int, warmup: int, threads: int,
             repeats: int = 1) -> dict[str, dict[str, Any]]:
    """All ONNX files timed interleaved run by run; speed-up = median per-run ratio against ``names[0]``.

    With ``repeats`` > 1 the whole interleaved run is made again on new sessions: the figures pool every
    run, and each repeat's own medians are kept, so that two rows can be told apart from noise.
    """
    times: list[np.ndarray] = []  # per repeat: (models, runs)
    for _ in range(repeats):
        timed = time_onnx([work / f"{n}.onnx" for n in names], threads=threads, runs=runs, warmup=warmup)
        times.append(np.asarray([t.times_ms for t in timed]))
    out = {}
    for i, name in enumerate(names):
        arr = np.concatenate([t[i] for t in times])
        ratio = np.concatenate([t[0] / t[i] for t in times])
        p, r = percentiles(arr), percentiles(ratio)
        out[name] = {"latency_ms": p["p50"], "latency_p10_ms": p["p10"], "latency_p90_ms": p["p90"],
                     "speedup": r["p50"], "speedup_p10": r["p10"], "speedup_p90": r["p90"]}
        if repeats > 1:
            out[name]["repeats"] = [{"latency_ms": float(np.median(t[i])), "speedup": float(np.median(t[0] / t[i]))}
                                    for t in times]
    return out


def measure(models: dict[str, nn.Module], size: Sequence[int], args: argparse.Namespace, tag: str,
            runs: int, repeats: int = 1) -> dict[str, dict[str, Any]]:
    """MACs, parameters, export and interleaved latency of ``models`` (the first is the reference)."""
    work = Path(args.work) / tag
    work.mkdir(parents=True, exist_ok=True)
    exports = export_all(models, size, work)
    timing = time_all(list(models), work, runs, args.warmup, args.threads, repeats)
    base_macs = macs(next(iter(models.values())), size)
    rows = {}
    for name, model in models.items():
        m = macs(model, size)
        rows[name] = {"macs": m, "mac_reduction": base_macs / m, "params": count_params(model),
                      **timing[name], "export": exports[name]}
    return rows


# --------------------------------------------------------------------------------------------- ImageNet models


def ghost_and_pruned(model: nn.Module, size: Sequence[int], s_values: Sequence[int], round_tos: Sequence[int],
                     ghosts: dict[str, nn.Module] | None = None) -> tuple[dict[str, nn.Module], dict[str, dict]]:
    """The original, Ghost models at each s (unless given), and for each a pruned model at its MACs."""
    ghosts = ghosts if ghosts is not None else {f"ghost-s{s}": ghostify.convert(model, s=s, d=3) for s in s_values}
    models: dict[str, nn.Module] = {"original": model, **ghosts}
    meta: dict[str, dict] = {name: {"variant": "ghost"} for name in ghosts}
    meta["original"] = {"variant": "original"}
    for gname, ghost in ghosts.items():
        target = macs(ghost, size)
        for r in round_tos:
            ratio, got = match_macs(model, size, target, r)
            name = f"pruned@{gname}-r{r}"
            models[name] = prune(model, size, ratio, r)
            meta[name] = {"variant": "pruned", "matches": gname, "round_to": r, "pruning_ratio": ratio,
                          "macs_vs_match": got / target, "criterion": "any (uniform ratio: same architecture)"}
    return models, meta


def run_latency(args: argparse.Namespace, data: dict[str, Any]) -> None:
    import torchvision

    for name in args.models.split(","):
        t0 = time.time()
        torch.manual_seed(0)
        model = torchvision.models.get_model(name).eval()
        models, meta = ghost_and_pruned(model, IMAGENET_SIZE, args.s, args.round_to)
        rows = measure(models, IMAGENET_SIZE, args, name, args.runs)
        data.setdefault("latency", {})[name] = {
            **provenance(), "runs": args.runs, "warmup": args.warmup, "threads": args.threads,
            "input_size": list(IMAGENET_SIZE), "wall_s": round(time.time() - t0, 1),
            "rows": {k: {**meta[k], **v} for k, v in rows.items()}}
        print_rows(name, data["latency"][name]["rows"])


def latency_config() -> Any:
    """``GhostConfig(latency="measure")`` if this ghostify has it, else None."""
    fields = getattr(ghostify.GhostConfig, "__dataclass_fields__", {})
    return ghostify.GhostConfig if "latency" in fields else None


def run_latency_aware(args: argparse.Namespace, data: dict[str, Any]) -> None:
    """The latency-aware policy beside plain s=2 and pruning at its MACs, one interleaved run per model."""
    import torchvision

    cfg_cls = latency_config()
    section = data.setdefault("latency_aware", {})
    if cfg_cls is None:
        section["note"] = "skipped: this ghostify has no GhostConfig(latency=...); run again after it lands"
        print(section["note"])
        return
    extra = json.loads(args.latency_kwargs)
    tag = args.latency_tag
    for name in args.models.split(","):
        t0 = time.time()
        torch.manual_seed(0)
        model = torchvision.models.get_model(name).eval()
        aware = ghostify.convert(model, config=cfg_cls(s=2, d=3, latency="measure", **extra),
                                 input_size=IMAGENET_SIZE)
        plan = ghostify.get_plan(aware)
        models, meta = ghost_and_pruned(model, IMAGENET_SIZE, [], args.round_to, ghosts={"ghost-latency": aware})
        models["ghost-s2"] = ghostify.convert(model, s=2, d=3)
        meta["ghost-s2"] = {"variant": "ghost"}
        summary = {k: v for k, v in (plan.latency or {}).items() if not isinstance(v, (list, dict)) or k == "target"}
        meta["ghost-latency"] = {"variant": "ghost-latency", "config": {"latency": "measure", **extra},
                                 "converted": len(plan.converted), "layers": len(plan.layers),
                                 "s_per_layer": dict(Counter(str(x.s) for x in plan.converted)), "policy": summary,
                                 "convert_s": round(time.time() - t0, 1)}
        rows = measure(models, IMAGENET_SIZE, args, f"{name}-{tag}", args.runs)
        section[f"{name}:{tag}"] = {**provenance(), "runs": args.runs, "threads": args.threads,
                         "wall_s": round(time.time() - t0, 1), "rows": {k: {**meta[k], **v} for k, v in rows.items()}}
        print_rows(name, section[f"{name}:{tag}"]["rows"])


# --------------------------------------------------------------------------------------------- Fashion-MNIST


def fmnist_data(args: argparse.Namespace) -> tuple[Any, Any]:
    """The CPU-budget splits of ``bench/transfer_fmnist.py``: 20,000 training and 5,000 test images (seed 0)."""
    train = open_data(args.data, train=True, input_size=FMNIST_SIZE).subset(args.train_samples, 0)
    return train, test_split(args.data, args.test_samples, 0)


def fmnist_baseline(args: argparse.Namespace, data: dict[str, Any]) -> nn.Module:
    """The seed-0 baseline, trained once and kept in the work directory."""
    path = Path(args.work) / "fmnist_baseline.pt"
    model = vgg_small(args.widths)
    if path.is_file():
        state = torch.load(path, weights_only=True)  # a damaged file says so itself, not as a widths mismatch
        try:
            model.load_state_dict(state)
        except RuntimeError:
            raise SystemExit(f"the baseline at {path} has other widths than --widths {args.widths}: "
                             "give each width its own --work directory") from None
        return model.eval()
    if "fmnist-base" not in args.only:
        raise SystemExit(f"no baseline at {path}: run --only fmnist-base first")
    train, test = fmnist_data(args)
    torch.manual_seed(0)
    t0 = time.time()
    train_baseline(model, train, args.baseline_epochs, 128, 0.1, 0, "cpu")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    data.setdefault("fmnist", {})["baseline"] = {
        **provenance(), "model": "vgg_small (bench/transfer_fmnist.py)", "widths": list(args.widths),
        "epochs": args.baseline_epochs, "seed": 0,
        "train_samples": len(train), "test_samples": len(test), "train_s": round(time.time() - t0, 1),
        "test_acc": evaluate(model, test, 1000, "cpu"), "params": count_params(model),
        "macs": macs(model, FMNIST_SIZE)}
    print(f"baseline {data['fmnist']['baseline']['test_acc']:.2f}%")
    return model.eval()


def fmnist_ratios(base: nn.Module, args: argparse.Namespace) -> dict[tuple[int, int], float]:
    """Per (s, round_to): the pruning ratio whose MACs match the Ghost model's at s."""
    out = {}
    for s in args.s:
        target = macs(ghostify.convert(base, s=s, d=3), FMNIST_SIZE)
        for r in args.fmnist_round_to:
            out[s, r] = match_macs(base, FMNIST_SIZE, target, r)[0]
    return out


def layer_indices(layers: str) -> list[int] | None:
    """``--fmnist-extra``'s third field: the pruned convolutions as digits ("034"), or every one ("")."""
    return [int(c) for c in layers] if layers else None


def extra_row(r: int, ratio: float, layers: str = "") -> str:
    """The latency row of a pruned model given by its ratio (``--fmnist-extra``), not matched to a Ghost model."""
    return f"pruned@p{ratio:g}-r{r}" + (f"-l{layers}" if layers else "")


def latency_ghost(base: nn.Module, s: int, args: argparse.Namespace, **kw: Any) -> nn.Module:
    """The latency-aware policy at s: a layer converts only where its Ghost module measures faster here."""
    cfg = latency_config()(s=s, d=3, latency="measure", **json.loads(args.latency_kwargs))
    return ghostify.convert(base, config=cfg, input_size=FMNIST_SIZE, **kw).eval()


def conv_widths(model: nn.Module) -> list[list[int]]:
    """(in, out) channels of every convolution: the architecture a latency row times."""
    return [[m.in_channels, m.out_channels] for m in model.modules() if isinstance(m, nn.Conv2d)]


def latency_base(args: argparse.Namespace, data: dict[str, Any]) -> tuple[nn.Module, str]:
    """The network whose variants are timed. A second CPU's section (``--latency-section``) may time an
    untrained one: with a uniform pruning ratio the pruned and Ghost architectures do not depend on the
    weights (their ``widths`` are recorded to show it), so the first CPU's accuracy runs hold for them."""
    if not args.latency_section or (Path(args.work) / "fmnist_baseline.pt").is_file():
        return fmnist_baseline(args, data), "the cached baseline"
    torch.manual_seed(0)
    return vgg_small(args.widths).eval(), "untrained (seed 0): the timed architectures do not depend on the weights"


def run_fmnist_latency(args: argparse.Namespace, data: dict[str, Any]) -> None:
    base, weights = latency_base(args, data)
    models, meta = ghost_and_pruned(base, FMNIST_SIZE, args.s, args.fmnist_round_to)
    for r, ratio, layers in args.fmnist_extra:
        name = extra_row(r, ratio, layers)
        models[name] = prune(base, FMNIST_SIZE, ratio, r, layers=layer_indices(layers))
        meta[name] = {"variant": "pruned", "matches": None, "round_to": r, "pruning_ratio": ratio,
                      "layers": layers or "all", "criterion": "any (uniform ratio: same architecture)"}
    if latency_config() is not None:
        for s in args.s:
            models[f"ghost-lat-s{s}"] = latency_ghost(base, s, args)
            meta[f"ghost-lat-s{s}"] = {"variant": "ghost-lat", "s": s, "latency_kwargs": args.latency_kwargs,
                                       "converted": len(ghostify.get_plan(models[f"ghost-lat-s{s}"]).converted)}
    rows = measure(models, FMNIST_SIZE, args, "fmnist", args.fmnist_runs, args.fmnist_repeats)
    section = {**provenance(), "runs": args.fmnist_runs, "repeats": args.fmnist_repeats, "warmup": args.warmup,
               "threads": args.threads,
               "weights": weights,
               "rows": {k: {**meta[k], **v, "widths": conv_widths(models[k])} for k, v in rows.items()}}
    fm = data.setdefault("fmnist", {})
    if args.latency_section:
        fm.setdefault("latency_on", {})[args.latency_section] = section
    else:
        fm["latency"] = section
    print_rows("fmnist", section["rows"])


def bn_reestimate(model: nn.Module, images: torch.Tensor, batch: int = 64) -> nn.Module:
    """BatchNorm running statistics recomputed (cumulative average) on ``images``; weights untouched."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(0, len(images), batch):
            model(images[i:i + batch])
    for bn in bns:
        bn.momentum = 0.1
    return model.eval()


def distill(student: nn.Module, base: nn.Module, train: Any, test: Any, args: argparse.Namespace,
            seed: int, feature_weight: float = 0.0) -> dict[str, Any]:
    """The two KD budgets, each a run of its own with its LR schedule fitted to it: ``--steps`` steps, one epoch.

    The epoch run also records its test at step ``--steps``: mid-schedule, near the peak LR, which is
    not what a user with a ``--steps`` budget would run (kept to show the difference).
    ``feature_weight`` > 0 adds the per-layer feature term (Ghost students only: see ``ghost-feat``).
    """
    steps_per_epoch = len(train) // 32
    t0 = time.time()
    short = finetune(copy.deepcopy(student), base, train, test,
                     kd_config(steps=args.steps, steps_per_epoch=args.steps, max_steps=args.steps, seed=seed,
                               lr=args.lr, feature_weight=feature_weight), device="cpu")
    t1 = time.time()
    cfg = kd_config(steps=args.steps, steps_per_epoch=steps_per_epoch, seed=seed, lr=args.lr,
                    feature_weight=feature_weight)
    res = finetune(student, base, train, test, cfg, device="cpu")
    ev = {r["event"]: r for r in res.history if r["event"] in ("start", "eval")}
    return {f"after_{args.steps}_steps": short.student_acc, "steps_budget_run": short.steps,
            f"epoch_run_at_step_{args.steps}": ev["eval"]["student_acc"], "after_1_epoch": res.student_acc,
            "distill_steps": res.steps, "lr": args.lr, "feature_weight": feature_weight,
            "distill_s": round(time.time() - t1, 1), "distill_budget_s": round(t1 - t0, 1)}


def fmnist_student(job: tuple[str, int, int | None, float | None, str], base: nn.Module, calib: torch.Tensor,
                   test: Any, args: argparse.Namespace) -> tuple[nn.Module, dict]:
    """The student of a job of ``fmnist_jobs`` before distillation (pruned: channels in multiples of its
    round_to, only its convolutions if it names them), and its zero-shot figures."""
    method, s, r, ratio, layers = job
    t0 = time.time()
    row: dict[str, Any] = {"method": method, "s": s}
    if method == "unpruned":  # the ratio-0 end of the pruning curve, distilled by the same recipe
        student = copy.deepcopy(base).eval()
        row["zero_shot"] = evaluate(student, test, 1000, "cpu")
    elif method.startswith("ghost"):
        if method == "ghost-lat":
            student = latency_ghost(base, s, args, init="transfer", calibration_data=calib)
            row["converted"] = len(ghostify.get_plan(student).converted)
        else:
            student = ghostify.convert(base, s=s, d=3, init="transfer", calibration_data=calib).eval()
        row["zero_shot"] = evaluate(student, test, 1000, "cpu")
    else:
        student = prune(base, FMNIST_SIZE, ratio, r, method, batch=calib, layers=layer_indices(layers))
        row.update(pruning_ratio=ratio, round_to=r, layers=layers or "all",
                   zero_shot_as_is=evaluate(student, test, 1000, "cpu"))
        row["zero_shot"] = evaluate(bn_reestimate(student, calib), test, 1000, "cpu")  # after BN re-estimation
    row.update(macs=macs(student, FMNIST_SIZE), params=count_params(student), init_s=round(time.time() - t0, 1))
    return student, row


def fmnist_jobs(args: argparse.Namespace, ratios: dict[tuple[int, int], float]
                ) -> list[tuple[str, int, int | None, float | None, str]]:
    """(method, s, round_to, ratio, layers) to run: Ghost models at each s; pruned ones at each Ghost model's
    MACs (one that another s already gave, by coarse rounding, skipped) and the ``--fmnist-extra`` ones (s = 0)."""
    jobs, seen = [], set()
    for m in args.methods.split(","):
        if m == "unpruned" or m.startswith("ghost"):
            jobs += [(m, s, None, None, "") for s in ([0] if m == "unpruned" else args.s)]
            continue
        matched = [(s, r, ratios[s, r], "") for s in args.s for r in args.fmnist_round_to]
        for s, r, ratio, layers in matched + [(0, *extra) for extra in args.fmnist_extra]:
            if (m, r, ratio, layers) not in seen:
                jobs.append((m, s, r, ratio, layers))
            seen.add((m, r, ratio, layers))
    return jobs


def variant_name(job: tuple[str, int, int | None, float | None, str]) -> str:
    """The accuracy section's key of a job: ``ghost-s2``, ``taylor-r8-s2``, ``magnitude-r16-p0.5-l12``."""
    method, s, r, ratio, layers = job
    if method == "unpruned":
        return method
    if r is None:
        return f"{method}-s{s}"
    if s == 0:  # a --fmnist-extra model
        return f"{method}-r{r}-p{ratio:g}" + (f"-l{layers}" if layers else "")
    return f"{method}-r{r}-s{s}"


def run_fmnist(args: argparse.Namespace, data: dict[str, Any]) -> None:
    base = fmnist_baseline(args, data)
    train, test = fmnist_data(args)
    ratios = fmnist_ratios(base, args)
    section = data.setdefault("fmnist", {}).setdefault("accuracy", {})
    for seed in args.seeds:
        calib = calibration_batch(train, args.calib_samples, seed)
        for job in fmnist_jobs(args, ratios):
            method, s, r, ratio, layers = job
            student, row = fmnist_student(job, base, calib, test, args)
            if not args.zero_shot_only:
                weight = args.feature_weight if method == "ghost-feat" else 0.0
                row.update(distill(student, base, train, test, args, seed, weight))
            row.update(provenance())
            if method == "ghost-feat":  # the architecture of ghost-s{s}: its latency row
                row["latency_row"] = f"ghost-s{s}"
            if s == 0 and r is not None:  # a --fmnist-extra model: named by its ratio
                row["latency_row"] = extra_row(r, ratio, layers)
            variant = variant_name(job)
            section.setdefault(variant, {})[str(seed)] = row
            print(json.dumps({"variant": variant, "seed": seed, **row}), flush=True)
            save(args, data)  # a piece killed half-way keeps what it finished


# --------------------------------------------------------------------------------------------- report


def print_rows(title: str, rows: dict[str, dict[str, Any]]) -> None:
    for name, r in rows.items():
        print(f"{title:12s} {name:28s} MACs {r['macs'] / 1e6:9.2f} M (x{r['mac_reduction']:.2f})  params "
              f"{r['params'] / 1e6:7.3f} M  {r['latency_ms']:8.3f} ms  x{r['speedup']:.3f}", flush=True)


def command_line() -> str:
    return ".venv/bin/python " + " ".join(shlex.quote(a) for a in ["bench/vs_pruning.py", *sys.argv[1:]])


def provenance() -> dict[str, Any]:
    """What each piece records beside its figures: its command line and the CPU it ran on."""
    return {"command": command_line(), "cpu": cpu_info()}


def environment() -> dict[str, Any]:
    import onnxruntime as ort

    try:
        import torch_pruning as tp

        tp_version = getattr(tp, "__version__", "unknown")
    except ImportError:
        tp_version = None
    return {"cpu": cpu_info(), "machine": platform.machine(), "onnxruntime": ort.__version__,
            "torch": torch.__version__, "torch_pruning": tp_version, "ghostify": ghostify.__version__,
            "torch_threads": torch.get_num_threads()}


def load(args: argparse.Namespace) -> dict[str, Any]:
    path = Path(args.out)
    return json.loads(path.read_text()) if path.is_file() else {"schema": "ghostify.vs_pruning/1"}


def merge(into: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``new`` merged into ``into``, dict by dict (``new`` wins elsewhere)."""
    for k, v in new.items():
        into[k] = merge(into[k], v) if isinstance(v, dict) and isinstance(into.get(k), dict) else v
    return into


def save(args: argparse.Namespace, data: dict[str, Any]) -> None:
    """Merge ``data`` into the JSON on disk under a file lock: pieces running side by side keep each other's.

    ``environment`` is the machine of the last piece that measured (the report measures nothing); each
    piece's own CPU is in its provenance.
    """
    if set(args.only) - {"report"}:
        data["environment"] = environment()
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    with open(Path(args.work) / f"{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        merged = merge(json.loads(path.read_text()) if path.is_file() else {}, data)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(merged, indent=2) + "\n")
        tmp.replace(path)


def parse_extra(value: str) -> tuple[int, float, str]:
    """``round_to:ratio`` or ``round_to:ratio:digits`` (only those convolutions pruned, by index)."""
    r, ratio, *layers = value.split(":")
    return int(r), float(ratio), layers[0] if layers else ""


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="report", help=f"comma-separated pieces: {', '.join(PIECES)}")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--s", default="2,3,4")
    ap.add_argument("--round-to", default="8,16", help="pruned channels in multiples of these (fmnist: the first)")
    ap.add_argument("--runs", type=int, default=50, help="interleaved timed runs per model (224x224 models)")
    ap.add_argument("--fmnist-runs", type=int, default=2000, help="interleaved timed runs (Fashion-MNIST CNN)")
    ap.add_argument("--fmnist-repeats", type=int, default=1,
                    help="the Fashion-MNIST interleaved run made this many times on new sessions (pooled; each "
                    "repeat's medians kept: the noise between two rows)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    ap.add_argument("--latency-kwargs", default="{}", help="JSON: extra GhostConfig arguments of the latency row")
    ap.add_argument("--fmnist-round-to", default="1", help="pruned channels of the Fashion-MNIST CNN in multiples "
                    "of these (1: exact MAC match; 8 gives one model for s=3 and 4 at widths 16-64)")
    ap.add_argument("--fmnist-extra", default="8:0.01,16:0.01",
                    help="pruned models at these round_to:ratio pairs besides the MAC-matched ones (points of "
                    "the pruning front between the baseline and s=2; '' for none); round_to:ratio:034 prunes only "
                    "the convolutions of those indices (in module order)")
    ap.add_argument("--latency-section", default="",
                    help="fmnist-latency on a second CPU: its rows go to fmnist.latency_on.NAME, and the report "
                    "judges the bar on them too, with the accuracy runs made against the first CPU's section")
    ap.add_argument("--latency-tag", default="measure", help="name of the latency-aware row (one per --latency-kwargs)")
    ap.add_argument("--data", default=FMNIST)
    ap.add_argument("--train-samples", type=int, default=20000, help="training images (60000: all of them)")
    ap.add_argument("--test-samples", type=int, default=5000, help="test images (10000: all of them)")
    ap.add_argument("--widths", default="16,32,64", help="the CNN's widths (its --work directory caches one baseline)")
    ap.add_argument("--baseline-epochs", type=int, default=3,
                    help="epochs of the baseline's training (one-cycle SGD lr 0.1, batch 128)")
    ap.add_argument("--calib-samples", type=int, default=256)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=0.02, help="distillation peak lr, the same for every student")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default="ghost," + ",".join(CRITERIA),
                    help="ghost, ghost-lat (the latency-aware policy), ghost-feat (ghost distilled with the "
                    "per-layer feature term), pruning criteria, unpruned (the baseline through the same "
                    "distillation: the ratio-0 end of the pruning curve)")
    ap.add_argument("--feature-weight", type=float, default=0.3,
                    help="ghost-feat: weight of the feature term (each Ghost module pulled towards the output of "
                    "the convolution it replaced; a pruned layer has other widths than the teacher's, so no "
                    "pruned student can have it)")
    ap.add_argument("--zero-shot-only", action="store_true")
    ap.add_argument("--work", default="/tmp/ghostify-vs-pruning", help="ONNX files and the cached baseline")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "vs_pruning.json"))
    args = ap.parse_args(argv)
    args.only = args.only.split(",")
    if bad := set(args.only) - set(PIECES):
        ap.error(f"unknown piece(s) {sorted(bad)}; choose from {', '.join(PIECES)}")
    args.s = [int(v) for v in args.s.split(",")]
    args.widths = tuple(int(v) for v in args.widths.split(","))
    args.round_to = [int(v) for v in args.round_to.split(",")]
    args.fmnist_round_to = [int(v) for v in args.fmnist_round_to.split(",") if v]  # '': the extras only
    args.seeds = [int(v) for v in args.seeds.split(",")]
    args.fmnist_extra = [parse_extra(v) for v in args.fmnist_extra.split(",") if v]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(1)
    if set(args.only) - {"report"}:
        require_tp()
    data: dict[str, Any] = {}  # what this run measured; save() merges it into the JSON on disk
    steps = {"latency": run_latency, "latency-aware": run_latency_aware, "fmnist-base": fmnist_baseline,
             "fmnist-latency": run_fmnist_latency, "fmnist": run_fmnist}
    for piece in PIECES:
        if piece in args.only and piece != "report":
            steps[piece](args, data)
            save(args, data)
    if "report" in args.only:
        from bench.vs_pruning_report import report

        data = load(args)
        report(data, args)
        save(args, data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
