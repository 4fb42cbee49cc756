"""``ghostify export`` (ONNX with a parity check) and ``ghostify bench`` (onnxruntime latency)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from ghostify._torch import require_torch
from ghostify.cli.app import app, console, err_console, error, write_json
from ghostify.errors import GhostifyError


def _command_line(ctx: typer.Context) -> str:
    """The command as typed (rebuilt from the parsed parameters: works in-process too)."""
    words = ["ghostify", ctx.info_name or ""]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or value == param.default or value == []:
            continue
        if not param.opts[0].startswith("-"):  # an argument
            words.append(str(value))
        elif isinstance(value, bool):
            words.append(param.opts[0] if value else (param.secondary_opts or [param.opts[0]])[0])
        else:
            for v in value if isinstance(value, (list, tuple)) else [value]:
                words += [param.opts[0], str(v)]
    return " ".join(shlex.quote(w) for w in words)


INT8_OPT = typer.Option(False, "--int8", help="Write a static int8 model (onnxruntime's quantizer, QDQ, per-channel "
                        "int8 weights, uint8 activations), checked on held-out inputs instead of the parity check. "
                        "Needs --calib. See docs/deploy.md, 'int8'.")
CALIB_OPT = typer.Option(None, "--calib", help="int8 calibration data, as for `ghostify convert --calib`: a data "
                         "spec (fashion-mnist:DIR, cifar10:DIR, imagefolder:DIR) or a tensor file (.safetensors, "
                         ".npy, .pt; batch along dim 0). The samples after the calibration ones are the check's "
                         "held-out inputs.")
CALIB_SAMPLES_OPT = typer.Option(None, "--calib-samples", help="int8 calibration inputs (default 256; fewer than 16 "
                                 "only when asked for).")
KEEP_FLOAT_OPT = typer.Option(None, "--int8-keep-float", help="Keep matching nodes in float: a GLOB over ONNX node "
                              "names and torch module names (e.g. '*cheap*'); repeat the option. Default: none.")
METHOD_OPT = typer.Option("minmax", "--int8-method", help="Calibration method: minmax, entropy or percentile.")
CHECK_SAMPLES_OPT = typer.Option(256, "--int8-check-samples", help="Held-out inputs the int8 check runs on.")
MAX_REL_OPT = typer.Option(0.05, "--int8-max-rel-error", help="int8 check: largest mean|int8-fp32| / mean|fp32| of "
                           "the outputs that passes.")
MIN_AGREE_OPT = typer.Option(98.0, "--int8-min-agreement", help="int8 check: smallest top-1 agreement with the fp32 "
                             "model that passes, in percent.")
REDUCE_RANGE_OPT = typer.Option(None, "--int8-reduce-range/--int8-full-range", help="7-bit or 8-bit int8 weights "
                                "(default: 7-bit where this CPU is x86 without VNNI, whose 16-bit pair sums 8-bit "
                                "weights saturate). Set it when the model will run on another kind of CPU.")


def _int8_config(loaded: Any, calib: str | None, calib_samples: int | None, keep_float: list[str] | None,
                 method: str, check_samples: int, max_rel_error: float, min_agreement: float,
                 reduce_range: bool | None) -> Any:
    """The QuantizeConfig of `export --int8`: --calib read as `convert --calib` reads it."""
    from ghostify.data.calibration import SYNTHETIC, resolve_calibration
    from ghostify.export.quantize import QuantizeConfig

    if calib is None:
        raise GhostifyError("--int8 needs calibration data: pass --calib DATA (e.g. --calib fashion-mnist:DIR)")
    if calib == SYNTHETIC:
        raise GhostifyError("--calib synthetic: int8 calibration needs real inputs (a data spec or a tensor file)")
    if calib_samples is not None and calib_samples < 1:
        raise GhostifyError(f"--calib-samples must be >= 1, got {calib_samples}")
    if check_samples < 1:
        raise GhostifyError(f"--int8-check-samples must be >= 1, got {check_samples}")
    with err_console.status(f"reading calibration data {calib}"):
        found = resolve_calibration(calib, loaded.model, loaded.input_size, (calib_samples or 256) + check_samples)
    data = found.data if found.labels is None else (found.data, found.labels)
    return QuantizeConfig(data, calibration_samples=calib_samples, check_samples=check_samples, method=method,
                          keep_float=tuple(keep_float or ()), max_rel_error=max_rel_error, min_agreement=min_agreement,
                          reduce_range=reduce_range)


def _int8_line(int8: dict[str, Any]) -> str:
    """The int8 check's figures in words."""
    if not int8.get("checked"):
        return "int8 check not run"
    parts = [f"relative error {int8['rel_error']:.4f}"]
    if int8.get("agreement") is not None:
        parts.insert(0, f"top-1 agreement {int8['agreement']:.2f}%")
    if int8.get("accuracy_drop") is not None:
        parts.append(f"accuracy {int8['accuracy_fp32']:.2f}% -> {int8['accuracy_int8']:.2f}% "
                     f"({int8['accuracy_drop']:+.2f} pt drop)")
    return ", ".join(parts) + f" on {int8['check_samples']} {int8['check_inputs']} inputs"


def _report_int8(onnx: Path, result: Any) -> None:
    int8 = result.int8
    for note in int8.get("notes", []):
        err_console.print(f"[yellow]note:[/] {note}")
    if int8.get("kept_float_nodes"):
        err_console.print(f"[yellow]note:[/] kept in float: {len(int8['kept_float_nodes'])} nodes")
    if result.passed is False:
        where = f"{onnx} written anyway (--keep-failed)" if result.written else f"{onnx} not written"
        error(f"int8 check failed: {'; '.join(int8['failures'])} ({_int8_line(int8)}); {where}")
        raise typer.Exit(1)
    console.print(f"saved [bold]{onnx}[/] ({result.size_bytes / 1e6:.1f} MB, int8 QDQ, {int8['calib_samples']} "
                  f"calibration inputs, {int8['method']}; {_int8_line(int8)})")


def _print_notes(result: Any, opset: int | None) -> None:
    if result.fallback_reason:
        err_console.print(f"[yellow]note:[/] dynamo exporter failed ({result.fallback_reason}); used TorchScript")
    for note in result.deploy_notes:
        err_console.print(f"[yellow]note:[/] {note}")
    if result.compared_values == 0:
        err_console.print("[yellow]note:[/] the parity check compared no values (every output was empty, e.g. a "
                          "detector that found nothing above its score threshold); it says nothing")
    if opset is not None and result.opset != opset:  # the dynamo exporter picks its own opset (18+)
        err_console.print(f"[yellow]note:[/] asked for opset {opset}; the {result.exporter} exporter wrote opset "
                          f"{result.opset}")


def _check_flags(onnx: Path, rtol: float, opset: int | None, int8: bool, int8_flags: bool) -> None:
    """The export flags that are wrong on their own, before anything is loaded."""
    if onnx.suffix.lower() != ".onnx":
        raise GhostifyError(f"--onnx {onnx}: the output should end in .onnx")
    if not rtol > 0:
        raise GhostifyError(f"--rtol must be > 0, got {rtol}")
    if opset is not None and not 7 <= opset <= 30:
        raise GhostifyError(f"--opset must be between 7 and 30, got {opset}")
    if not int8 and int8_flags:
        raise GhostifyError("--calib, --calib-samples, --int8-keep-float and --int8-reduce-range/--int8-full-range "
                            "apply to an int8 export; add --int8")


@app.command()
def export(
    ctx: typer.Context,
    spec: str = typer.Argument(..., help="Model spec: torchvision:NAME, timm:NAME, ghostify:NAME, a .ghost archive "
                                         "or a model file."),
    onnx: Path = typer.Option(..., "--onnx", help="The .onnx file to write."),
    deploy: bool = typer.Option(True, "--deploy/--no-deploy",
                                help="Export the deployment form (BN folded, concat-free Ghost modules)."),
    opset: int | None = typer.Option(None, "--opset", help="ONNX opset (default: the exporter's; dynamo needs >= 18)."),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="Make the batch dimension symbolic."),
    input_size: str | None = typer.Option(None, "--input-size", help="C,H,W; C,L or C,T,H,W for 1-D or 3-D models "
                                                                      "(default: the model's config or archive, else "
                                                                      "3,224,224)."),
    rtol: float = typer.Option(1e-4, "--rtol", help="Largest max|ort-torch| / max|torch| that passes."),
    exporter: str = typer.Option("auto", "--exporter", help="auto (dynamo, TorchScript fallback), dynamo or "
                                                            "torchscript."),
    check: bool = typer.Option(True, "--check/--no-check", help="Compare onnxruntime with torch after export."),
    keep_failed: bool = typer.Option(False, "--keep-failed", help="Write the file even if the parity check fails."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write what happened as JSON ('-': stdout)."),
    arch: str | None = typer.Option(None, "--arch", help="Architecture SPEC for a state_dict file."),
    trust: bool = typer.Option(False, "--trust", help="Unpickle arbitrary classes (runs the file's code)."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs (never the input)."),
    weights: str | None = typer.Option(None, "--weights", help="Pretrained weights for a named model: a torchvision "
                                       "weight name (from torch hub's cache) or a local weights file."),
    pretrained: bool = typer.Option(False, "--pretrained", help="timm's pretrained weights (Hugging Face cache)."),
    int8: bool = INT8_OPT,
    calib: str | None = CALIB_OPT,
    calib_samples: int | None = CALIB_SAMPLES_OPT,
    int8_keep_float: list[str] | None = KEEP_FLOAT_OPT,
    int8_method: str = METHOD_OPT,
    int8_check_samples: int = CHECK_SAMPLES_OPT,
    int8_max_rel_error: float = MAX_REL_OPT,
    int8_min_agreement: float = MIN_AGREE_OPT,
    int8_reduce_range: bool | None = REDUCE_RANGE_OPT,
) -> None:
    """Export a model (original or converted) to ONNX and check it against torch with onnxruntime.

    Exit 1 when the outputs differ by more than --rtol, or with --int8 when the int8 check fails
    (the file is then not written).
    """
    require_torch("ghostify export")
    from ghostify.export.onnx import export_onnx
    from ghostify.io.specs import load_model
    from ghostify.utils import check_output_path, existing_paths

    _check_flags(onnx, rtol, opset, int8, calib is not None or calib_samples is not None or bool(int8_keep_float)
                 or int8_reduce_range is not None)
    with err_console.status(f"loading {spec}"):
        loaded = load_model(spec, input_size=input_size, arch=arch, trust=trust, weights=weights,
                            pretrained=pretrained)
    inputs = [loaded.path, *existing_paths([arch, weights, calib])]
    check_output_path(onnx, inputs, force, param="onnx")
    if json_path is not None and str(json_path) != "-":
        check_output_path(json_path, inputs + [onnx], force, param="json")
    quantize = _int8_config(loaded, calib, calib_samples, int8_keep_float, int8_method, int8_check_samples,
                            int8_max_rel_error, int8_min_agreement, int8_reduce_range) if int8 else None
    form = "deployment form" if deploy else "training form"
    with err_console.status(f"exporting {spec} ({form}, input {','.join(map(str, loaded.input_size))})"
                            + (", quantizing to int8" if int8 else "")):
        result = export_onnx(loaded.model, onnx, loaded.input_size, opset=opset, dynamic_batch=dynamic_batch,
                             deploy=deploy, check=check, rtol=rtol, exporter=exporter, keep_failed=keep_failed,
                             quantize=quantize)
    data = {"kind": "export", "command": _command_line(ctx), "spec": spec, "weights": loaded.weights,
            **result.to_dict()}
    if json_path is not None:
        write_json(json_path, data)
    err = "" if result.max_rel_error is None else (f"max rel error {result.max_rel_error:.2e} (abs "
                                                    f"{result.max_abs_error:.2e}, rtol {result.rtol:g})")
    _print_notes(result, opset)
    if result.int8 is not None:
        return _report_int8(onnx, result)
    if result.passed is False:
        where = f"{onnx} written anyway (--keep-failed)" if result.written else f"{onnx} not written"
        error(f"ONNX parity check failed: onnxruntime and torch differ, {err}; {where}")
        raise typer.Exit(1)
    console.print(f"saved [bold]{onnx}[/] ({result.size_bytes / 1e6:.1f} MB, {result.exporter} exporter, opset "
                  f"{result.opset}, {form}" + (f"; parity OK: {err}" if err else "; parity not checked") + ")")


def _ms(v: float) -> str:
    return f"{v:.2f}"


@app.command()
def bench(
    ctx: typer.Context,
    a: Path = typer.Argument(..., help="ONNX model A (the baseline)."),
    b: Path | None = typer.Argument(None, help="ONNX model B, timed interleaved with A (A B A B ...)."),
    threads: int = typer.Option(1, "--threads", help="onnxruntime intra-op threads."),
    batch: int = typer.Option(1, "--batch", help="Batch size (a batch > 1 needs an export with --dynamic-batch)."),
    runs: int = typer.Option(50, "--runs", help="Timed runs of each model."),
    warmup: int = typer.Option(10, "--warmup", help="Discarded warm-up runs of each model."),
    json_path: Path | None = typer.Option(None, "--json", help="Write the figures as JSON ('-': stdout)."),
    torch_specs: list[str] | None = typer.Option(None, "--torch", help="Also time eager torch: a model SPEC for A, "
                                                                         "then one for B (repeat the option)."),
    device: str = typer.Option("cpu", "--device", help="Device for --torch: cpu or cuda."),
    input_size: str | None = typer.Option(None, "--input-size", help="C,H,W for --torch models."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --json file."),
) -> None:
    """Latency of ONNX models on onnxruntime's CPU execution provider: medians, p10/p90, ratio B/A."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ghostify.runtime.latency import bench_onnx, bench_torch
    from ghostify.utils import check_output_path, existing_paths

    device = device.lower()
    if device not in ("cpu", "cuda", "gpu"):
        raise GhostifyError(f"--device must be cpu or cuda, got {device!r}")
    device = "cuda" if device == "gpu" else device
    if not torch_specs and (device != "cpu" or input_size is not None):  # onnxruntime runs on the CPU EP here
        raise GhostifyError("--device and --input-size apply to the --torch models; add --torch SPEC")
    if torch_specs and len(torch_specs) > 2:
        raise GhostifyError("--torch takes one SPEC for A and optionally one for B")
    if json_path is not None and str(json_path) != "-":
        check_output_path(json_path, [a] + ([b] if b else []) + existing_paths(torch_specs or []), force,
                          param="json")
    models = []
    if torch_specs:  # loaded and run once before any timing: a wrong --input-size is a one-line error
        require_torch("ghostify bench --torch")
        from ghostify.forward import check_forward
        from ghostify.io.specs import load_model

        models = [load_model(s, input_size=input_size) for s in torch_specs]
        for m in models:
            check_forward(m.model, m.input_size)
    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*cols, console=err_console, transient=True) as progress:
        task = progress.add_task(f"onnxruntime, {threads} thread(s)", total=None)
        result = bench_onnx(a, b, threads=threads, batch=batch, runs=runs, warmup=warmup,
                            progress=lambda done, total: progress.update(task, completed=done, total=total))
        if torch_specs:
            task2 = progress.add_task(f"torch eager ({device})", total=None)
            result["torch"] = bench_torch(models[0].model, models[1].model if len(models) > 1 else None,
                                          models[0].input_size, batch=batch, runs=runs, warmup=warmup,
                                          device=device, threads=threads,
                                          progress=lambda done, total: progress.update(task2, completed=done,
                                                                                       total=total))
            result["torch"]["specs"] = list(torch_specs)
    result["command"] = _command_line(ctx)
    if device == "cuda":  # only with --torch: torch is here (ghostify.report imports it)
        from ghostify.report.report import GPU_NOTE

        result["gpu_note"] = GPU_NOTE
    _render(result)
    if device == "cuda":
        err_console.print(f"[yellow]note:[/] {result['gpu_note']}")
    if json_path is not None:
        write_json(json_path, result)


def _render(result: dict[str, Any]) -> None:
    cpu = result["cpu"]
    isa = ", ".join(cpu["isa"]) or "?"
    console.print(f"[bold]{cpu['model']}[/] ({cpu['arch']}; {isa}); onnxruntime {result['onnxruntime_version']} "
                  f"CPU EP, {result['threads']} thread(s), batch {result['batch']}, {result['runs']} runs after "
                  f"{result['warmup']} warm-up" + (", interleaved A B A B" if result["interleaved"] else ""))
    table = Table(show_header=True, header_style="bold")
    for col in ("model", "p50 ms", "p10 ms", "p90 ms"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for key in ("a", "b"):
        if key in result:
            r = result[key]
            table.add_row(f"{key.upper()}: {r['name']}", _ms(r["p50_ms"]), _ms(r["p10_ms"]), _ms(r["p90_ms"]))
    console.print(table)
    if "b" in result:
        console.print(f"speed-up of B over A: [bold]{result['speedup']:.3f}×[/] (median of per-run t_A/t_B; p10 "
                      f"{result['speedup_p10']:.3f}, p90 {result['speedup_p90']:.3f}); latency_ratio B/A "
                      f"{result['latency_ratio']:.3f}")
    t = result.get("torch")
    if t:
        line = f"torch eager ({t['device']}): A p50 {_ms(t['a']['p50_ms'])} ms"
        if "b" in t:
            line += f", B p50 {_ms(t['b']['p50_ms'])} ms, speed-up {t['speedup']:.3f}× (p10 {t['speedup_p10']:.3f}, " \
                    f"p90 {t['speedup_p90']:.3f})"
        console.print(line)
