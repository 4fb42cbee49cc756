"""``ghostify convert`` and ``ghostify analyze``: parse, call the library, render."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from ghostify.cli.app import app, err_console, write_json
from ghostify.errors import GhostifyError, NothingToConvertError

S_OPT = typer.Option(2, "--s", "-s", help="Ratio s: 1/s of each layer's maps are intrinsic (paper: 2).")
D_OPT = typer.Option(3, "--d", "-d", help="Cheap kernel d: depthwise d×d (odd; paper: 3).")
INCLUDE_OPT = typer.Option(None, "--include", help="Convert only convolutions whose name matches GLOB (repeatable).")
EXCLUDE_OPT = typer.Option(None, "--exclude", help="Never convert convolutions matching GLOB (repeatable).")
SIZE_OPT = typer.Option(None, "--input-size", help="C,H,W; C,L or C,T,H,W for 1-D or 3-D models (default: the "
                        "model's config, else 3,224,224; 3,16,112,112 for a video model).")
ARCH_OPT = typer.Option(None, "--arch", help="Architecture SPEC for a state_dict file.")
TRUST_OPT = typer.Option(False, "--trust", help="Unpickle arbitrary classes from the model file (runs its code).")
STEM_OPT = typer.Option(False, "--convert-stem", help="Also convert the stem convolution.")
DW_OPT = typer.Option(False, "--convert-depthwise", help="Also convert depthwise convolutions.")
FUSE_OPT = typer.Option(True, "--fuse/--no-fuse", help="Fold conv→BN→act chains into paper-form Ghost modules.")
TARGET_OPT = typer.Option("cpu", "--target", help="Deployment target: cpu or gpu (the report warns for gpu).")
WEIGHTS_OPT = typer.Option(None, "--weights", help="Pretrained weights: a torchvision weight name (IMAGENET1K_V1, "
                           "DEFAULT; read from torch hub's cache, never downloaded) or a local weights file.")
PRETRAINED_OPT = typer.Option(False, "--pretrained", help="timm's pretrained weights, from the Hugging Face cache "
                              "(never downloaded); torchvision: its DEFAULT weights.")
WIDTH_OPT = typer.Option(None, "--width", min=40, max=1000, help="Render the report at N columns (default: the "
                         "terminal's; 160 when not a terminal).")


LATENCY_OPT = typer.Option(False, "--latency-aware", help="Time every candidate layer on this machine (onnxruntime "
                           "CPU, deployment form, real input shape; cached) and convert only where it measures faster.")
TARGET_SPEEDUP_OPT = typer.Option(None, "--target-speedup", help="Choose s per layer (2, 3, 4 or keep) to reach this "
                                  "measured speed-up at the least predicted accuracy cost (implies --latency-aware).")
TARGET_MACS_OPT = typer.Option(None, "--target-macs", help="The same budget as a MACs reduction (original / Ghost).")
THREADS_OPT = typer.Option(1, "--threads", help="onnxruntime threads for --latency-aware timings (the deployment's).")


@dataclass
class Policy:
    """The policy flags, as given."""

    s: int = 2
    d: int = 3
    include: list[str] | None = None
    exclude: list[str] | None = None
    convert_stem: bool = False
    convert_depthwise: bool = False
    fuse: bool = True
    latency_aware: bool = False
    target_speedup: float | None = None
    target_macs: float | None = None
    threads: int = 1


def build_config(policy: Policy) -> Any:
    """The GhostConfig the policy flags describe."""
    from ghostify.policy import GhostConfig

    return GhostConfig(s=policy.s, d=policy.d, include=policy.include or ["*"], exclude=policy.exclude or [],
                       keep_stem=not policy.convert_stem, keep_depthwise=not policy.convert_depthwise,
                       fuse=policy.fuse, latency="measure" if policy.latency_aware else None,
                       target_speedup=policy.target_speedup, target_macs=policy.target_macs, threads=policy.threads)


def _check_target(target: str) -> str:
    target = target.lower()
    if target not in ("cpu", "gpu", "cuda"):
        raise GhostifyError(f"--target must be cpu or gpu, got {target!r}")
    return "gpu" if target == "cuda" else target


def default_output(spec: str, path: Path | None, s: int, d: int) -> Path:
    """Next to the input file, or in the working directory for a named model."""
    if path is not None:
        return path.with_name(f"{path.stem}.ghost-s{s}d{d}.ghost")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec.split(":")[-1]).strip("_") or "model"
    return Path(f"{name}.ghost-s{s}d{d}.ghost")


INIT_OPT = typer.Option("auto", "--init", help="auto (transfer when the source carries trained weights: a model "
                        "file, a state_dict, a .pt2, pretrained registry weights; else random), transfer, or random "
                        "(train from scratch, as the paper). See docs/transfer.md.")
CALIB_OPT = typer.Option(None, "--calib", help="Unlabeled calibration data for transfer: a data spec "
                         "(fashion-mnist:DIR, cifar10:DIR, imagefolder:DIR), a tensor file in the model's own input "
                         "format (.safetensors, .npy, .pt; batch along dim 0), or 'synthetic' (inputs distilled from "
                         "the model's BatchNorm statistics). Without it, transfer is data-free.")
CALIB_SAMPLES_OPT = typer.Option(None, "--calib-samples", help="Calibration inputs to use (default 256), or to "
                                 "distil (default 32).")
SEED_OPT = typer.Option(0, "--seed", help="Seed for random init, sampling and distillation (reproducible runs).")


@dataclass
class _Init:
    """Which init runs, why, and on what data."""

    init: str
    reason: str
    data: Any = None
    synthetic: bool = False


def _choose_init(init: str, calib: str | None, calib_samples: int | None, loaded: Any) -> _Init:
    """--init auto|random|transfer and --calib, resolved against what the source carries."""
    from ghostify.data.calibration import resolve_calibration

    init = init.lower()
    if init not in ("auto", "random", "transfer"):
        raise GhostifyError(f"--init must be auto, random or transfer, got {init!r}")
    if init == "auto":
        init, reason = loaded.default_init()
    else:
        reason = f"--init {init}"
    if init == "random":
        if calib is not None:
            raise GhostifyError(f"--calib is used by transfer init only, but the init is random ({reason})")
        return _Init(init, reason)
    if calib is None:  # data-free: inputs distilled from BatchNorm statistics where there are any
        return _Init(init, f"{reason}; data-free", synthetic=True)
    with err_console.status(f"reading calibration data {calib}"):
        found = resolve_calibration(calib, loaded.model, loaded.input_size, calib_samples)
    return _Init(init, f"{reason}; calibrated on {found.description}", found.data, found.synthetic)


def _check_outputs(out: Path | None, json_path: Path | None, spec: str, loaded: Any, s: int, d: int,
                   extra_inputs: list[str | None], force: bool) -> tuple[Path, list[Any]]:
    from ghostify.utils import check_output_path, existing_paths

    out = out or default_output(spec, loaded.path, s, d)
    inputs = [loaded.path, *existing_paths(extra_inputs)]
    check_output_path(out, inputs, force, param="out")
    if out.suffix != ".ghost":  # ghostify reads archives back by their suffix: x.pt would be taken for torch.save
        raise GhostifyError(f"--out {out}: the output is a ghostify archive; give it the .ghost suffix "
                            f"({out.with_suffix('.ghost').name})")
    if json_path is not None and str(json_path) != "-":
        check_output_path(json_path, inputs + [out], force, param="json")
    return out, inputs


def _convert(loaded: Any, config: Any, choice: _Init, calib_samples: int | None, seed: int) -> Any:
    import ghostify
    from ghostify.cli.progress import progress_reporter

    label = "transfer init" if choice.init == "transfer" else "converting"
    label = "timing layers, then " + label if config.latency else label
    with progress_reporter(label) as report:
        # input_size: synthetic transfer distils inputs of that size; --latency-aware times layers at it
        ghost = ghostify.convert(loaded.model, config=config, init=choice.init, calibration_data=choice.data,
                                 input_size=loaded.input_size,
                                 calibration_samples=calib_samples, seed=seed, progress=report)
    ghostify.get_plan(ghost).init_reason = choice.reason
    return ghost


def _measure(loaded: Any, ghost: Any, spec: str, target: str) -> tuple[Any, Any]:
    from ghostify.forward import check_forward
    from ghostify.report.report import build_report

    with err_console.status("measuring MACs and parameters"):
        report = _with_input_hint(loaded.model, lambda: build_report(loaded.model, ghost, loaded.input_size, spec,
                                                                     target, weights=loaded.weights))
        output = _same_output(loaded.model, check_forward(loaded.model, loaded.input_size),
                              check_forward(ghost, loaded.input_size))
    return report, output


@app.command()
def convert(
    spec: str = typer.Argument(..., help="torchvision:NAME, timm:NAME, ghostify:NAME, pkg.module:factory or a file."),
    s: int = S_OPT,
    d: int = D_OPT,
    out: Path | None = typer.Option(None, "--out", "-o", help="Output .ghost archive (default: next to the input)."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the report as JSON."),
    include: list[str] | None = INCLUDE_OPT,
    exclude: list[str] | None = EXCLUDE_OPT,
    input_size: str | None = SIZE_OPT,
    arch: str | None = ARCH_OPT,
    trust: bool = TRUST_OPT,
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs (never the input)."),
    strict: bool = typer.Option(False, "--strict", help="Exit 2 when nothing converts."),
    convert_stem: bool = STEM_OPT,
    convert_depthwise: bool = DW_OPT,
    fuse: bool = FUSE_OPT,
    target: str = TARGET_OPT,
    layers: bool = typer.Option(True, "--layers/--no-layers", help="Print the per-layer table."),
    weights: str | None = WEIGHTS_OPT,
    pretrained: bool = PRETRAINED_OPT,
    width: int | None = WIDTH_OPT,
    init: str = INIT_OPT,
    calib: str | None = CALIB_OPT,
    calib_samples: int | None = CALIB_SAMPLES_OPT,
    seed: int = SEED_OPT,
    latency_aware: bool = LATENCY_OPT,
    target_speedup: float | None = TARGET_SPEEDUP_OPT,
    target_macs: float | None = TARGET_MACS_OPT,
    threads: int = THREADS_OPT,
) -> None:
    """Convert a model and save it as a .ghost archive (reload with ghostify.load)."""
    from ghostify.io.archive import save
    from ghostify.report.render import render_report

    target = _check_target(target)
    config = build_config(Policy(s, d, include, exclude, convert_stem, convert_depthwise, fuse, latency_aware,
                                 target_speedup, target_macs, threads))
    loaded = _load(spec, input_size=input_size, arch=arch, trust=trust, weights=weights, pretrained=pretrained)
    calib_file = calib if calib is not None and calib != "synthetic" else None
    out, inputs = _check_outputs(out, json_path, spec, loaded, s, d, [arch, calib_file, weights], force)
    ghost = _convert(loaded, config, _choose_init(init, calib, calib_samples, loaded), calib_samples, seed)
    if not ghost.ghostify_plan.converted and strict:
        raise NothingToConvertError("no convolution was converted (see the reasons above); no output written")
    report, output = _measure(loaded, ghost, spec, target)
    human_out = _human_console(json_path, width)  # stdout holds the JSON alone with --json -
    render_report(report, human_out, layers=layers)
    if not ghost.ghostify_plan.converted:
        err_console.print("[yellow]warning:[/] no convolution was converted (see the reasons above); no output written")
        return
    source = loaded.spec if loaded.path is None else (loaded.path if loaded.kind == "file-export" else loaded.model)
    with err_console.status(f"writing {out}"):
        save(ghost, out, source, loaded.input_size, force=force, inputs=inputs, weights=loaded.weights,
             extra={"totals": report.totals, "output_shape": output})
    if json_path is not None:
        write_json(json_path, report.to_json())
    human_out.print(f"saved [bold]{out}[/] ({out.stat().st_size / 1e6:.1f} MB)"
                    + (f", report [bold]{json_path}[/]" if json_path is not None and str(json_path) != "-" else ""))


def _load(spec: str, **kwargs: Any) -> Any:
    """``load_model`` with a status line."""
    from ghostify.io.specs import load_model

    with err_console.status(f"loading {spec}"):
        return load_model(spec, **kwargs)


def _human_console(json_path: Path | None, width: int | None) -> Any:
    """Where the report goes: stdout, or stderr when stdout carries the JSON (``--json -``)."""
    from ghostify.report.render import report_console

    return report_console(width, stderr=json_path is not None and str(json_path) == "-")


def _same_output(model: Any, y0: Any, y1: Any) -> list[int] | str:
    """The conversion keeps what the model returns: its structure and tensor shapes (a detector: its keys)."""
    import torch

    from ghostify.forward import describe_output, input_convention

    convention = input_convention(model)
    before, after = describe_output(y0, convention), describe_output(y1, convention)
    if before != after:  # a bug in the pass, never the user's input
        raise RuntimeError(f"converted model output {after} differs from the original {before}")
    return list(y1.shape) if isinstance(y1, torch.Tensor) else after


def _with_input_hint(model: Any, run: Callable[[], Any]) -> Any:
    """Run ``run``; when the model rejects the input size, say what it expects (when it tells)."""
    from ghostify.io.specs import expected_input

    try:
        return run()
    except GhostifyError as exc:
        hint = expected_input(model) if str(exc).startswith("the model rejected") else None
        if hint is None:
            raise
        raise GhostifyError(f"{exc.message} (the model expects {hint})", param=exc.param, hint=exc.hint) from exc


def _int_list(text: str | None, flag: str) -> list[int]:
    if not text:
        return []
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise GhostifyError(f"{flag} must be comma-separated integers (e.g. 2,3,4,5), got {text!r}") from None


@app.command()
def analyze(
    spec: str = typer.Argument(..., help="Model spec (see `ghostify convert --help`)."),
    s: int = S_OPT,
    d: int = D_OPT,
    include: list[str] | None = INCLUDE_OPT,
    exclude: list[str] | None = EXCLUDE_OPT,
    input_size: str | None = SIZE_OPT,
    arch: str | None = ARCH_OPT,
    trust: bool = TRUST_OPT,
    convert_stem: bool = STEM_OPT,
    convert_depthwise: bool = DW_OPT,
    fuse: bool = FUSE_OPT,
    target: str = TARGET_OPT,
    sweep_s: str | None = typer.Option(None, "--sweep-s", help="Table 4-style sweep over s, e.g. 2,3,4,5."),
    sweep_d: str | None = typer.Option(None, "--sweep-d", help="Table 3-style sweep over d, e.g. 1,3,5,7."),
    json_path: Path | None = typer.Option(None, "--json", help="Write the report (or sweep) as JSON."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --json file."),
    layers: bool = typer.Option(True, "--layers/--no-layers", help="Print the per-layer table."),
    weights: str | None = WEIGHTS_OPT,
    pretrained: bool = PRETRAINED_OPT,
    width: int | None = WIDTH_OPT,
) -> None:
    """Dry run: the per-layer report (or an s/d sweep) without writing a model."""
    import ghostify
    from ghostify.forward import check_forward
    from ghostify.report.render import render_report
    from ghostify.report.report import build_report
    from ghostify.utils import check_output_path, existing_paths

    target = _check_target(target)
    ss, ds = _int_list(sweep_s, "--sweep-s"), _int_list(sweep_d, "--sweep-d")
    config = build_config(Policy(s, d, include, exclude, convert_stem, convert_depthwise, fuse))
    if json_path is not None and str(json_path) != "-":  # never an input
        check_output_path(json_path, [Path(spec), *existing_paths([arch, weights])], force, param="json")
    human_out = _human_console(json_path, width)  # stdout holds the JSON alone with --json -
    loaded = _load(spec, input_size=input_size, arch=arch, trust=trust, weights=weights, pretrained=pretrained)
    _with_input_hint(loaded.model, lambda: check_forward(loaded.model, loaded.input_size))
    if not ss and not ds:
        with err_console.status(f"analyzing {spec} (s={s}, d={d})"):
            ghost = ghostify.convert(loaded.model, config=config)
            report = build_report(loaded.model, ghost, loaded.input_size, spec, target, weights=loaded.weights)
        render_report(report, human_out, layers=layers)
        if json_path is not None:
            write_json(json_path, report.to_json())
        return

    settings = [(v, d) for v in ss] + [(s, v) for v in ds]
    _sweep(loaded, spec, settings, lambda s_i, d_i: build_config(Policy(s_i, d_i, include, exclude, convert_stem,
                                                                 convert_depthwise, fuse)), target, human_out,
           json_path)


def _sweep(loaded: Any, spec: str, settings: list[tuple[int, int]], config_for: Callable[[int, int], Any],
           target: str, human_out: Any, json_path: Path | None) -> None:
    """``analyze --sweep-s/--sweep-d``: one conversion per (s, d), a Table 3/4-style table."""
    import json

    from rich.progress import Progress

    import ghostify
    from ghostify.forward import example_input
    from ghostify.report.counting import count_macs, count_params
    from ghostify.report.render import human
    from ghostify.report.report import build_report

    x = example_input(loaded.model, loaded.input_size)
    base_macs, base_params = count_macs(loaded.model, x).total, count_params(loaded.model)
    rows = []
    with Progress(console=err_console, transient=True) as progress:
        task = progress.add_task("sweep", total=len(settings))
        for s_i, d_i in settings:
            ghost = ghostify.convert(loaded.model, config=config_for(s_i, d_i))
            rep = build_report(loaded.model, ghost, loaded.input_size, spec, target, weights=loaded.weights)
            rows.append({"s": s_i, "d": d_i, **{k: rep.totals[k] for k in (
                "params_after", "macs_after", "theoretical_speedup", "measured_speedup", "measured_compression")}})
            progress.advance(task)
    table = Table(title=f"{spec}: sweep (original {human(base_params)} params, {human(base_macs)} MACs)",
                  header_style="bold")
    for col in ("s", "d", "weights", "MACs", "r_s Eq.4 (model)", "speed-up measured", "compression"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["s"]), str(r["d"]), human(r["params_after"]), human(r["macs_after"]),
                      f"{r['theoretical_speedup']:.2f}", f"{r['measured_speedup']:.2f}",
                      f"{r['measured_compression']:.2f}")
    human_out.print(table)
    if json_path is not None:
        write_json(json_path, json.dumps({"schema": "ghostify.sweep/1", "kind": "sweep", "model": spec,
                                           "weights": loaded.weights, "input_size": list(loaded.input_size),
                                           "params_before": base_params, "macs_before": base_macs, "rows": rows},
                                          indent=2))
