"""Transfer init vs random init on Fashion-MNIST: zero-shot, after 200 distillation steps, after 1 epoch.

Trains a small VGG-style baseline (5 conv->BN->ReLU, 2 max-pools, GAP, linear), converts it
with ``ghostify.convert`` at s = 2, 3, 4 (d = 3) with

* ``random``: the paper's setting (fresh weights),
* ``transfer-data-free``: ``init="transfer"`` without data (weight-space fit),
* ``transfer-synthetic``: ``init="transfer"`` without data, ``input_size`` given: the fit runs on
  inputs distilled from the baseline's BatchNorm statistics (s=2 only in budget mode),
* ``transfer-calibrated``: ``init="transfer"`` with N unlabeled training images,
* ``transfer-closed-form``: the same without the refinement (``TransferConfig(refine_steps=0)``),
  zero-shot only: what the refinement buys,

then distills each from the baseline with ``ghostify.train.finetune`` (KD, T=4, alpha=0.9,
SGD lr 0.02, batch 32, warm-up + cosine) and measures test accuracy. The "200 steps" figure is the 200th step
of the 1-epoch run (same schedule); where a 1-epoch run is skipped (budget mode, s > 2) a
200-step run follows that same schedule.

    nice -n 19 .venv/bin/python bench/transfer_fmnist.py            # CPU budget mode (<= 15 min)
    .venv/bin/python bench/transfer_fmnist.py --full --device cuda  # full training set, all runs

Budget mode (CPU, <= 15 min): a fixed 20,000-image training subset (an "epoch" is a pass over
it: 625 steps at batch 32); the baseline (5 conv layers, widths 16-32-64) trained 3 epochs; at
s=2 random and calibrated students distilled 1 epoch (the bar), the data-free ones 200 steps
(synthetic inputs: 128); at s=3, 4 random and calibrated 200 steps, data-free zero-shot only;
test on a fixed 5,000-image subset of the test set (the same for every figure, baseline included).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ghostify  # noqa: E402
from ghostify.data.specs import open_data  # noqa: E402
from ghostify.train import FinetuneConfig, evaluate, finetune  # noqa: E402

INITS = ("random", "transfer-data-free", "transfer-synthetic", "transfer-calibrated", "transfer-closed-form")


def vgg_small(widths: tuple[int, int, int] = (16, 32, 64), num_classes: int = 10) -> nn.Sequential:
    a, b, c = widths

    def cbr(i: int, o: int) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]

    return nn.Sequential(*cbr(1, a), *cbr(a, b), nn.MaxPool2d(2), *cbr(b, b), *cbr(b, c), nn.MaxPool2d(2),
                         *cbr(c, c), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))


def train_baseline(model: nn.Module, data, epochs: int, batch: int, lr: float, seed: int, device: str) -> None:
    torch.manual_seed(seed)
    model.to(device).train()
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * len(loader))
    for _ in range(epochs):
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


def test_split(spec: str, samples: int | None, seed: int):
    """The test set, or a fixed ``samples``-image subset of it (the same for every figure)."""
    test = open_data(spec, train=False, input_size=(1, 28, 28))
    return test.subset(samples, seed) if samples is not None else test


def calibration_batch(train, samples: int, seed: int) -> torch.Tensor:
    """``samples`` unlabeled training images (labels are never read), disjoint seed from the order."""
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + 1))
    return torch.stack([train[i][0] for i in order[:samples].tolist()])


def kd_config(*, steps: int, steps_per_epoch: int, epochs: int = 1, max_steps: int | None = None,
              batch_size: int = 32, lr: float = 0.02, seed: int = 0, feature_weight: float = 0.0) -> FinetuneConfig:
    """The distillation recipe: KD T=4, alpha=0.9, SGD, warm-up + cosine over ``epochs``, a test at ``steps``."""
    return FinetuneConfig(epochs=epochs, max_steps=max_steps, batch_size=batch_size,
                          lr=lr, optimizer="sgd", temperature=4.0, alpha=0.9, seed=seed,
                          feature_weight=feature_weight,
                          eval_at_steps=[steps], schedule_steps=steps_per_epoch * epochs, log_every=10 ** 9,
                          eval_batch_size=1000, evaluate_teacher=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="full training set, 1-epoch runs at every s (GPU)")
    ap.add_argument("--data", default="fashion-mnist:/usr/share/datasets/fashion-mnist")
    ap.add_argument("--train-samples", type=int, default=None)
    ap.add_argument("--baseline-epochs", type=int, default=None)
    ap.add_argument("--widths", default="16,32,64")
    ap.add_argument("--test-samples", type=int, default=None)
    ap.add_argument("--s", default="2,3,4")
    ap.add_argument("--d", type=int, default=3)
    ap.add_argument("--calib-samples", type=int, default=256)
    ap.add_argument("--synthetic-samples", type=int, default=None,
                    help="inputs distilled from the BatchNorm statistics (default: 128 budget mode, 256 full)")
    ap.add_argument("--batch-size", type=int, default=32,
                    help="distillation batch (32: an epoch of the 20k budget subset is 625 steps)")
    ap.add_argument("--lr", type=float, default=0.02, help="distillation peak lr (SGD)")
    ap.add_argument("--lr-transfer", type=float, default=None,
                    help="peak lr for transfer-initialized students (default: --lr); a fine-tuning start")
    ap.add_argument("--feature-weight", type=float, default=0.0,
                    help="weight of the per-layer feature term in distillation (0: logits only)")
    ap.add_argument("--distill-samples", type=int, default=None,
                    help="training images in a distillation epoch (default: the baseline's subset; 0: all)")
    ap.add_argument("--distill-epochs", type=int, default=1,
                    help="epochs of distillation where a full run is made (the bar: 1); per-epoch accuracy kept")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--inits", default=",".join(INITS), help="which student inits to run (comma-separated)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "transfer_fmnist.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.time()
    cpu_start = time.process_time()
    load_start = [round(v, 2) for v in os.getloadavg()]
    full = args.full
    train_samples = args.train_samples if args.train_samples is not None else (None if full else 20000)
    base_epochs = args.baseline_epochs if args.baseline_epochs is not None else (8 if full else 3)
    widths = tuple(int(v) for v in args.widths.split(","))
    synthetic_samples = args.synthetic_samples or (256 if full else 128)
    s_values = [int(v) for v in args.s.split(",")]
    epoch_s = set(s_values) if full else {2}

    full_train = open_data(args.data, train=True, input_size=(1, 28, 28))
    train = full_train.subset(train_samples, args.seed) if train_samples is not None else full_train
    # the distillation "epoch": the baseline's training subset unless --distill-samples says otherwise
    # (0: the whole training set)
    distill_train = train
    if args.distill_samples is not None:
        distill_train = full_train if args.distill_samples == 0 else full_train.subset(args.distill_samples, args.seed)
    test = test_split(args.data, args.test_samples if args.test_samples is not None else (None if full else 5000),
                      args.seed)
    calib = calibration_batch(train, args.calib_samples, args.seed)

    torch.manual_seed(args.seed)
    base = vgg_small(widths)
    t0 = time.time()
    train_baseline(base, train, base_epochs, 128, 0.1, args.seed, args.device)
    base_time = time.time() - t0
    base_acc = evaluate(base, test, 1000, args.device)
    print(f"baseline {base_acc:.2f}% ({base_time:.0f}s)", flush=True)

    steps_per_epoch = len(distill_train) // args.batch_size
    rows = []
    for s in s_values:
        for init in [i for i in INITS if i in args.inits.split(",")]:
            if init == "transfer-synthetic" and not full and s not in epoch_s:
                continue  # budget mode: distilling inputs costs ~2 min a run, so s=2 only
            t0 = time.time()
            kw = {"init": "random"} if init == "random" else {"init": "transfer"}
            if init in ("transfer-calibrated", "transfer-closed-form"):
                kw["calibration_data"] = calib
            if init == "transfer-closed-form":
                kw["transfer"] = ghostify.TransferConfig(refine_steps=0)
            if init == "transfer-synthetic":  # no data: inputs distilled from the BatchNorm statistics
                kw["input_size"] = (1, 28, 28)
                kw["calibration_samples"] = synthetic_samples
            ghost = ghostify.convert(base.cpu(), s=s, d=args.d, **kw).to(args.device)
            convert_s = time.time() - t0
            plan = ghostify.get_plan(ghost)
            # budget mode: the bar's pair (random, calibrated) gets the 1-epoch run at s=2, the data-free
            # students 200 steps at s=2 and zero-shot only at s > 2
            one_epoch = full or (s in epoch_s and init in ("random", "transfer-calibrated"))
            if init == "transfer-closed-form" or (
                    not full and s not in epoch_s and init in ("transfer-data-free", "transfer-synthetic")):
                ghost.eval()
                row = {"s": s, "d": args.d, "init": init, "zero_shot": evaluate(ghost, test, 1000, args.device),
                       f"after_{args.steps}_steps": None, "after_1_epoch": None, "distill_steps": 0,
                       "convert_s": round(convert_s, 1), "distill_s": 0.0,
                       "transfer_errors": {layer.name: layer.transfer_error for layer in plan.converted},
                       "transfer_fit": sorted({str(layer.transfer_fit) for layer in plan.converted}),
                       "params": sum(p.numel() for p in ghost.parameters()), "note": "zero-shot only"}
                rows.append(row)
                print(json.dumps(row), flush=True)
                continue
            lr = args.lr if (init == "random" or args.lr_transfer is None) else args.lr_transfer
            epochs = args.distill_epochs if one_epoch else 1
            cfg = kd_config(steps=args.steps, steps_per_epoch=steps_per_epoch, epochs=epochs,
                            max_steps=None if one_epoch else args.steps, batch_size=args.batch_size, lr=lr,
                            seed=args.seed, feature_weight=args.feature_weight)
            t1 = time.time()
            res = finetune(ghost, base, distill_train, test, cfg, device=args.device)
            ft_s = time.time() - t1
            ev = {r["event"]: r for r in res.history if r["event"] in ("start", "eval")}
            row = {
                "s": s, "d": args.d, "init": init,
                "zero_shot": ev["start"]["student_acc"],
                f"after_{args.steps}_steps": ev.get("eval", {}).get("student_acc"),
                "after_1_epoch": res.student_acc if one_epoch and epochs == 1 else None,
                **({"per_epoch": [r["student_acc"] for r in res.history if r["event"] == "epoch"]}
                   if one_epoch and epochs > 1 else {}),
                "distill_steps": res.steps, "lr": lr,
                "convert_s": round(convert_s, 1), "distill_s": round(ft_s, 1),
                "transfer_errors": {layer.name: layer.transfer_error for layer in plan.converted},
                "transfer_fit": sorted({str(layer.transfer_fit) for layer in plan.converted}),
                "params": sum(p.numel() for p in ghost.parameters()),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)

    def pick(s: int, init: str) -> dict:
        return next(r for r in rows if r["s"] == s and r["init"] == init)

    bars = {}
    if 2 in s_values and set(INITS) <= set(args.inits.split(",")) and args.distill_epochs == 1:
        cal, free, rnd = pick(2, "transfer-calibrated"), pick(2, "transfer-data-free"), pick(2, "random")
        synth = pick(2, "transfer-synthetic")
        bars = {
            "calibrated_zero_shot_fraction_of_baseline": round(cal["zero_shot"] / base_acc, 4),
            "calibrated_zero_shot_ge_75pct_of_baseline": cal["zero_shot"] >= 0.75 * base_acc,
            "calibrated_after_1_epoch_gap_pt": round(base_acc - cal["after_1_epoch"], 2),
            "calibrated_after_1_epoch_within_1pt": base_acc - cal["after_1_epoch"] <= 1.0,
            "random_after_1_epoch_gap_pt": round(base_acc - rnd["after_1_epoch"], 2),
            "data_free_zero_shot": free["zero_shot"], "random_zero_shot": rnd["zero_shot"],
            "data_free_synthetic_zero_shot": synth["zero_shot"],
            "closed_form_zero_shot": pick(2, "transfer-closed-form")["zero_shot"],
        }
    result = {
        "command": (f"nice -n {os.nice(0)} " if os.nice(0) > 0 else "") + ".venv/bin/python " + " ".join(
            shlex.quote(a) for a in ["bench/transfer_fmnist.py", *sys.argv[1:]]),
        "mode": "full" if full else "cpu-budget",
        "device": args.device, "torch_threads": args.threads, "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "data": {"spec": args.data, "train_samples": len(train), "distill_samples": len(distill_train),
                 "test_samples": len(test),
                 "calibration_samples": int(calib.shape[0]), "calibration_labels_used": False,
                 "synthetic_samples": synthetic_samples},
        "model": {"name": "vgg_small", "widths": list(widths), "params": sum(p.numel() for p in base.parameters())},
        "baseline": {"test_acc": base_acc, "epochs": base_epochs, "train_s": round(base_time, 1)},
        "distill": {"batch_size": args.batch_size, "lr": args.lr, "lr_transfer": args.lr_transfer or args.lr,
                    "optimizer": "sgd", "temperature": 4.0, "feature_weight": args.feature_weight,
                    "alpha": 0.9, "steps_per_epoch": steps_per_epoch, "one_epoch_at_s": sorted(epoch_s),
                    "one_epoch_inits": list(INITS) if full else ["random", "transfer-calibrated"],
                    "epochs": args.distill_epochs,
                    "note": f"after_{args.steps}_steps is step {args.steps} of the distillation schedule"},
        "results": rows,
        "bars_s2": bars,
        "wall_s": round(time.time() - t_start, 1),
        "cpu_s": round(time.process_time() - cpu_start, 1),  # this process's CPU time: the machine is shared
        "loadavg_start": load_start, "loadavg_end": [round(v, 2) for v in os.getloadavg()],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(bars, indent=2))
    print(f"wrote {out} in {result['wall_s']:.0f}s")


if __name__ == "__main__":
    main()
