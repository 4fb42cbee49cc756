"""int8 deployment: do the Ghost module's gains and static int8 quantization compose?

For ResNet-18, ResNet-50 and MobileNetV2 (torchvision, random weights re-initialised like
``bench/latency.py``: latency does not depend on the values) and the Fashion-MNIST CNN of
``bench/transfer_fmnist.py``, the original and its Ghost model (s=2, d=3), each in fp32 and int8,
all go through ``ghostify.export.export_onnx`` (int8: ``quantize=QuantizeConfig(...)``, i.e.
onnxruntime's ``quant_pre_process`` + ``quantize_static`` QDQ) and are timed interleaved in one
run (onnxruntime CPU EP, 1 thread, batch 1; ``ghostify.runtime.latency.time_onnx``). Figures are
medians of per-run ratios.

Variants measured to choose the defaults (docs/deploy.md, "int8"):

* ResNet-18 Ghost int8 in the int8 deployment form (``INT8_DEPLOY``: no split sums, no identity
  Adds) against the fp32 deployment form, with the cheap depthwise operations kept in float, and
  the same int8 model exported a second time (an A/A control: the spread between identical files);
* on the Fashion-MNIST Ghost model: calibration MinMax / Entropy / Percentile, keep-float
  nothing / the cheap operations, and a deliberately bad quantization (1 calibration sample).

Fashion-MNIST accuracy (the full 10,000-image test set): the baseline (trained as in
``bench/transfer_fmnist.py``, budget mode: 3 epochs on a 20 K subset), its Ghost model zero-shot
(transfer init on 256 calibration images) and fine-tuned (1 epoch of KD), each fp32 and int8.

    python bench/int8.py [--runs 100] [--models resnet18,resnet50,mobilenet_v2,fmnist]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from latency import reinit  # noqa: E402  (bench/latency.py)
from transfer_fmnist import train_baseline, vgg_small  # noqa: E402  (bench/transfer_fmnist.py)

import ghostify  # noqa: E402
from ghostify.data.specs import load_data, open_data  # noqa: E402
from ghostify.export import export_onnx  # noqa: E402
from ghostify.export.deploy import DeployConfig  # noqa: E402
from ghostify.export.quantize import QuantizeConfig  # noqa: E402
from ghostify.runtime import cpu_info  # noqa: E402
from ghostify.runtime.latency import percentiles, time_onnx  # noqa: E402
from ghostify.runtime.session import onnx_session  # noqa: E402
from ghostify.train import FinetuneConfig, evaluate, finetune  # noqa: E402

TV_MODELS = ("resnet18", "resnet50", "mobilenet_v2")
S, D = 2, 3
SIZE = (3, 224, 224)
FMNIST = "fashion-mnist:/usr/share/datasets/fashion-mnist"


def export(model: nn.Module, path: Path, size: tuple[int, ...], quantize: QuantizeConfig | None = None) -> dict:
    """Export (fp32 parity-checked, or int8 with its check) and return what the JSON keeps."""
    res = export_onnx(model, path, size, quantize=quantize, keep_failed=True)
    if quantize is None and not res.passed:
        raise SystemExit(f"parity failed for {path}: {res.max_rel_error}")
    out = {"path": path.name, "size_bytes": res.size_bytes, "seconds": res.seconds}
    if res.int8 is not None:
        keep = ("agreement", "rel_error", "accuracy_fp32", "accuracy_int8", "accuracy_drop", "check_samples",
                "check_inputs", "passed", "failures", "calib_samples", "method", "reduce_range", "keep_float",
                "quantize_seconds")
        out["int8"] = {k: res.int8.get(k) for k in keep}
        out["int8"]["kept_float_nodes"] = len(res.int8["kept_float_nodes"])
    else:
        out["max_rel_error"] = res.max_rel_error
    return out


def timing(paths: dict[str, Path], runs: int, warmup: int) -> dict[str, Any]:
    """Every model interleaved in one run; medians and the per-run ratios of each pair we quote."""
    names = list(paths)
    timed = time_onnx([paths[n] for n in names], threads=1, runs=runs, warmup=warmup)
    ms = {n: np.asarray(t.times_ms) for n, t in zip(names, timed, strict=True)}
    out: dict[str, Any] = {"p50_ms": {n: round(float(np.median(v)), 3) for n, v in ms.items()}, "ratios": {}}
    for a in ("original_fp32", "original_int8", "ghost_fp32"):
        for b in names:
            if a in ms and b not in (a, "original_fp32"):
                p = percentiles(ms[a] / ms[b])  # > 1: b is faster than a
                out["ratios"][f"{b} vs {a}"] = {"speedup": round(p["p50"], 3), "p10": round(p["p10"], 3),
                                                "p90": round(p["p90"], 3)}
    return out


def tv_model(name: str, args: argparse.Namespace, work: Path, calib: torch.Tensor) -> dict[str, Any]:
    import torchvision

    t0 = time.time()
    torch.manual_seed(0)
    orig = getattr(torchvision.models, name)().eval()
    ghost = reinit(ghostify.convert(orig, S, D))
    q = QuantizeConfig(calib, calibration_samples=args.tv_calib_samples, check_samples=args.tv_check_samples)
    paths = {"original_fp32": work / f"{name}.onnx", "original_int8": work / f"{name}.int8.onnx",
             "ghost_fp32": work / f"{name}_ghost.onnx", "ghost_int8": work / f"{name}_ghost.int8.onnx"}
    exports = {"original_fp32": export(orig, paths["original_fp32"], SIZE),
               "original_int8": export(orig, paths["original_int8"], SIZE, q),
               "ghost_fp32": export(ghost, paths["ghost_fp32"], SIZE),
               "ghost_int8": export(ghost, paths["ghost_int8"], SIZE, q)}
    if name == "resnet18":  # the variants the defaults were chosen against
        variants = {"ghost_int8_fp32_deploy_form": QuantizeConfig(**{**q.__dict__, "deploy_config": DeployConfig()}),
                    # the same model exported again: an A/A control, the spread of one interleaved run
                    "ghost_int8_again": q,
                    "ghost_int8_keep_cheap_float": QuantizeConfig(**{**q.__dict__, "keep_float": ("*cheap*",)})}
        for key, cfg in variants.items():
            paths[key] = work / f"{name}_{key}.onnx"
            exports[key] = export(ghost, paths[key], SIZE, cfg)
    row = {"model": f"torchvision:{name}", "s": S, "d": D, "exports": exports,
           "latency": timing(paths, args.runs, args.warmup)}
    row["seconds"] = round(time.time() - t0, 1)
    lat = row["latency"]
    print(f"{name}: p50 ms {lat['p50_ms']}; ghost_int8 vs original_fp32 "
          f"{lat['ratios']['ghost_int8 vs original_fp32']['speedup']:.2f}x, vs original_int8 "
          f"{lat['ratios']['ghost_int8 vs original_int8']['speedup']:.2f}x [{row['seconds']:.0f}s]", flush=True)
    return row


def onnx_accuracy(path: Path, images: torch.Tensor, labels: torch.Tensor, disabled: tuple[str, ...] = ()) -> float:
    if disabled:  # e.g. WeightBiasQuantization: it re-quantizes the weights of nodes kept in float
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=list(disabled))
    else:
        sess = onnx_session(path, threads=1)
    name = sess.get_inputs()[0].name
    x = images.numpy()
    top = np.array([int(sess.run(None, {name: x[i:i + 1]})[0].argmax()) for i in range(x.shape[0])])
    return round(100.0 * float(np.mean(top == labels.numpy())), 2)


def fmnist_models(args: argparse.Namespace) -> tuple[dict[str, nn.Module], dict[str, Any], Any]:
    """The baseline, its Ghost model zero-shot (calibrated transfer) and after 1 epoch of KD."""
    train = open_data(FMNIST, train=True, input_size=(1, 28, 28)).subset(20000, args.seed)
    test = open_data(FMNIST, train=False, input_size=(1, 28, 28))
    calib = torch.stack([train[i][0] for i in torch.randperm(len(train), generator=torch.Generator().manual_seed(
        args.seed + 1))[:256].tolist()])  # as bench/transfer_fmnist.py
    torch.manual_seed(args.seed)
    base = vgg_small()
    t0 = time.time()
    train_baseline(base, train, 3, 128, 0.1, args.seed, "cpu")
    zero = ghostify.convert(base, s=S, d=D, init="transfer", calibration_data=calib).eval()
    tuned = copy.deepcopy(zero)
    cfg = FinetuneConfig(epochs=1, batch_size=32, lr=0.02, optimizer="sgd", temperature=4.0, alpha=0.9,
                         seed=args.seed, schedule_steps=len(train) // 32, log_every=10 ** 9, eval_batch_size=1000,
                         evaluate_teacher=False)
    finetune(tuned, base, train, test, cfg, device="cpu")
    info = {"train_samples": len(train), "baseline_epochs": 3, "distill": "1 epoch KD (T=4, alpha=0.9, SGD lr 0.02, "
            "batch 32), transfer init on 256 calibration images", "train_s": round(time.time() - t0, 1)}
    return {"original": base.eval(), "ghost_zero_shot": zero, "ghost_finetuned": tuned.eval()}, info, test


def fmnist(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    models, info, test = fmnist_models(args)
    size = (1, 28, 28)
    batch = load_data(FMNIST, train=True, input_size=size, max_samples=512, seed=args.seed + 7)
    test_b = load_data(test, input_size=size)
    q = QuantizeConfig((batch.images, batch.labels), calibration_samples=256, check_samples=256)
    rows: dict[str, Any] = {}
    paths: dict[str, Path] = {}
    for key, model in models.items():
        fp = work / f"fm_{key}.onnx"
        i8 = work / f"fm_{key}.int8.onnx"
        rows[key] = {"fp32_export": export(model, fp, size), "int8_export": export(model, i8, size, q),
                     "test_acc_fp32": evaluate(model, test, 1000), "test_acc_int8": onnx_accuracy(i8, test_b.images,
                                                                                                test_b.labels)}
        rows[key]["int8_minus_fp32_pt"] = round(rows[key]["test_acc_int8"] - rows[key]["test_acc_fp32"], 2)
        print(f"fmnist {key}: fp32 {rows[key]['test_acc_fp32']:.2f}% int8 {rows[key]['test_acc_int8']:.2f}%",
              flush=True)
        if key in ("original", "ghost_finetuned"):
            name = "original" if key == "original" else "ghost"
            paths[f"{name}_fp32"], paths[f"{name}_int8"] = fp, i8
    variants = fmnist_variants(models["ghost_finetuned"], q, work, test_b)
    gate = cli_gate(models["ghost_finetuned"], work)
    lat = timing(paths, args.runs * 5, args.warmup * 5)  # sub-millisecond models: more runs
    base, ghost = rows["original"], rows["ghost_finetuned"]
    bars = {"ghost_int8_vs_ghost_fp32_pt": round(ghost["test_acc_int8"] - ghost["test_acc_fp32"], 2),
            "ghost_int8_within_0.5pt_of_ghost_fp32": abs(ghost["test_acc_int8"] - ghost["test_acc_fp32"]) <= 0.5,
            "ghost_int8_vs_original_fp32_pt": round(ghost["test_acc_int8"] - base["test_acc_fp32"], 2),
            "ghost_int8_within_1pt_of_original_fp32": base["test_acc_fp32"] - ghost["test_acc_int8"] <= 1.0}
    return {"model": "vgg_small (bench/transfer_fmnist.py)", "s": S, "d": D, "data": {**info,
            "test_samples": len(test), "calibration": "256 training images; check: the next 256"},
            "rows": rows, "variants": variants, "cli_gate": gate, "latency": lat, "bars": bars}


def cli_gate(ghost: nn.Module, work: Path) -> dict[str, Any]:
    """The gate end to end through the CLI: a sane int8 export, ``check --max-accuracy-drop``, and a
    deliberately bad one (1 calibration sample, nothing kept in float)."""
    import subprocess

    model = work / "fm_ghost.pt"
    torch.save(ghost, model)
    base = [sys.executable, "-m", "ghostify", "export", str(model), "--trust", "--input-size", "1,28,28", "--int8",
            "--calib", FMNIST, "--force"]
    runs = {"sane": ["--onnx", str(work / "cli.onnx"), "--json", str(work / "cli.json")],
            "bad_1_sample": ["--onnx", str(work / "cli_bad.onnx"), "--json", str(work / "cli_bad.json"),
                             "--calib-samples", "1"]}
    out: dict[str, Any] = {}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for key, extra in runs.items():
        proc = subprocess.run(base + extra, capture_output=True, text=True, env=env)
        report = json.loads((work / extra[3]).read_text()) if (work / extra[3]).exists() else {}
        out[key] = {"command": "ghostify " + " ".join(shlex.quote(a) for a in (base + extra)[3:]),
                    "exit_code": proc.returncode, "stderr_tail": proc.stderr.strip().splitlines()[-1:],
                    "file_written": (work / extra[1]).exists(), "int8": report.get("int8")}
    check = subprocess.run([sys.executable, "-m", "ghostify", "check", str(work / "cli.json"), "--max-accuracy-drop",
                            "0.5"], capture_output=True, text=True, env=env)
    out["check_max_accuracy_drop_0.5"] = {"exit_code": check.returncode, "stdout_tail": check.stdout[-400:]}
    print(f"cli gate: sane exit {out['sane']['exit_code']}, bad exit {out['bad_1_sample']['exit_code']}, "
          f"check exit {check.returncode}", flush=True)
    return out


def fmnist_variants(ghost: nn.Module, q: QuantizeConfig, work: Path, test: Any) -> dict[str, Any]:
    """Calibration method, keep-float and a deliberately bad 1-sample calibration, on the tuned Ghost CNN."""
    cases = {"minmax": {}, "entropy": {"method": "entropy"}, "percentile": {"method": "percentile"},
             "keep_cheap_float": {"keep_float": ("*cheap*",)}, "bad_1_sample": {"calibration_samples": 1}}
    out = {}
    for key, change in cases.items():
        path = work / f"fm_variant_{key}.onnx"
        info = export(ghost, path, (1, 28, 28), QuantizeConfig(**{**q.__dict__, **change}))
        info["test_acc_int8"] = onnx_accuracy(path, test.images, test.labels)
        if key == "keep_cheap_float":  # truly float: without onnxruntime's load-time weight quantization
            info["test_acc_int8_without_WeightBiasQuantization"] = onnx_accuracy(
                path, test.images, test.labels, ("WeightBiasQuantization",))
        out[key] = info
        print(f"fmnist variant {key}: test {info['test_acc_int8']:.2f}%, check {info['int8']['agreement']}% "
              f"agreement, rel {info['int8']['rel_error']}, passed {info['int8']['passed']}", flush=True)
    return out


def save(result: dict[str, Any], path: str) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--models", default=",".join((*TV_MODELS, "fmnist")))
    ap.add_argument("--tv-calib-samples", type=int, default=64,
                    help="calibration inputs for the random-weight torchvision models (latency only)")
    ap.add_argument("--tv-check-samples", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training (onnxruntime: always 1)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "int8.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    import onnxruntime as ort

    t_start, cpu_start = time.time(), time.process_time()
    result: dict[str, Any] = {
        "kind": "int8_bench", "command": "python " + " ".join(shlex.quote(a) for a in ["bench/int8.py", *sys.argv[1:]]),
        "cpu": cpu_info(), "machine": platform.machine(), "onnxruntime_version": ort.__version__,
        "torch_version": torch.__version__, "threads": 1, "batch": 1, "runs": args.runs, "warmup": args.warmup,
        "interleaved": True, "loadavg_start": [round(v, 2) for v in os.getloadavg()],
        "quantization": "onnxruntime quant_pre_process + quantize_static, QDQ, int8 per-channel weights, uint8 "
                        "activations, MinMax, logits float",
        "calibration_tv": f"{args.tv_calib_samples} Fashion-MNIST images resized to 3x224x224 (random weights: "
                          "the check figures of these models say little; latency does not depend on them)",
        "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tv = [m for m in models if m in TV_MODELS]
        if tv:
            n = args.tv_calib_samples + args.tv_check_samples
            calib = load_data(FMNIST, train=True, input_size=SIZE, max_samples=n, seed=args.seed).images
            for name in tv:
                result["rows"].append(tv_model(name, args, work, calib))
                save(result, args.out)  # a later failure keeps what was measured
        if "fmnist" in models:
            result["fmnist"] = fmnist(args, work)
    r18 = next((r for r in result["rows"] if r["model"] == "torchvision:resnet18"), None)
    if r18 is not None:
        ratios = r18["latency"]["ratios"]
        result["bars_resnet18"] = {
            "ghost_int8_vs_original_fp32": ratios["ghost_int8 vs original_fp32"]["speedup"],
            "ghost_int8_ge_3x_original_fp32": ratios["ghost_int8 vs original_fp32"]["speedup"] >= 3.0,
            "ghost_int8_vs_original_int8": ratios["ghost_int8 vs original_int8"]["speedup"],
            "ghost_int8_ge_1.25x_original_int8": ratios["ghost_int8 vs original_int8"]["speedup"] >= 1.25}
    result.update({"wall_s": round(time.time() - t_start, 1), "cpu_s": round(time.process_time() - cpu_start, 1),
                   "loadavg_end": [round(v, 2) for v in os.getloadavg()]})
    out = save(result, args.out)
    print(json.dumps({k: v for k, v in result.items() if k.startswith("bars")}, indent=2))
    if "fmnist" in result:
        print(json.dumps(result["fmnist"]["bars"], indent=2))
    print(f"wrote {out} in {result['wall_s']:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
