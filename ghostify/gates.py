"""``ghostify check``: gate a conversion in CI on the figures its reports measured.

A gate compares one figure with a threshold; :func:`run_gates` evaluates them all. Figures are
read from the JSON that ghostify writes (several reports may be given together):

* ``convert`` / ``analyze`` report (``--json``): ``totals.macs_before/macs_after`` and
  ``totals.params_before/params_after``;
* ``bench`` JSON: ``latency_ratio`` (at the top level, in ``totals`` or in one sub-object);
* ``finetune``: its ``--metrics`` JSON-lines file (the last record with ``student_acc`` and
  ``teacher_acc``), or any JSON object with ``accuracy_drop``, or ``student_acc`` +
  ``teacher_acc`` (at the top level or under ``finetune``);
* a ``.ghost`` archive: its ``recipe.json`` carries the convert totals (and the finetune summary);
* an int8 ``export`` JSON (``--int8`` on labelled data): ``int8.accuracy_drop``.

Definitions (all documented in docs/exit-codes.md and docs/ci.md):

* MACs reduction = ``macs_before / macs_after`` (a factor: 2.0 means half the MACs);
* params reduction = ``params_before / params_after``;
* latency ratio = converted latency / original latency (below 1 is faster);
* accuracy drop = teacher accuracy - student accuracy, in percentage points (for an int8
  export: fp32 accuracy - int8 accuracy on the held-out inputs).
"""

from __future__ import annotations

import json
import math
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ghostify.errors import GhostifyError, InvalidValueError

__all__ = ["Gate", "GateResult", "GATES", "read_figures", "run_gates", "MAX_REPORT_BYTES"]

MAX_REPORT_BYTES = 64 * 2**20  # a report is small; anything bigger is not one


@dataclass(frozen=True)
class Gate:
    """One figure and the direction its threshold bounds it."""

    key: str  # the figure's name in read_figures(), and the threshold's key in run_gates()
    label: str  # words for messages
    minimum: bool  # True: figure >= threshold holds; False: figure <= threshold holds
    unit: str  # "x" factor, "pp" percentage points
    source: str  # which report provides it (for the "missing figure" message)


GATES: dict[str, Gate] = {
    "macs_reduction": Gate("macs_reduction", "MACs reduction (before/after)", True, "x",
                           "a convert report (its totals)"),
    "params_reduction": Gate("params_reduction", "params reduction (before/after)", True, "x",
                             "a convert report (its totals)"),
    "latency_ratio": Gate("latency_ratio", "latency ratio (after/before)", False, "x",
                          "a bench report with latency_ratio"),
    "accuracy_drop": Gate("accuracy_drop", "accuracy drop (teacher - student, fp32 - int8)", False, "pp",
                          "finetune metrics (student_acc and teacher_acc, or accuracy_drop), or an int8 export "
                          "checked on labelled data"),
}


@dataclass
class GateResult:
    gate: Gate
    value: float
    threshold: float
    passed: bool
    source: str  # the report the figure came from

    def describe(self, name: str | None = None) -> str:
        """One line; ``name`` says where the threshold came from (default: the gate's key)."""
        op = ">=" if self.gate.minimum else "<="
        verdict = "ok" if self.passed else "FAILED"
        return (f"{self.gate.label}: {_fmt(self.value, self.gate.unit)} (needs {op} "
                f"{_fmt(self.threshold, self.gate.unit)}, {name or self.gate.key}) {verdict}")


def _fmt(v: float, unit: str) -> str:
    return f"{v:.4g}×" if unit == "x" else f"{v:.4g} pp"


def _number(obj: Any, key: str, where: str, label: str) -> float:
    if key not in obj:
        raise GhostifyError(f"{label}: {where} has no {key!r}")
    value = obj[key]
    try:  # float() of a 400-digit integer overflows
        finite = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(float(value))
    except OverflowError:
        finite = False
    if not finite:
        raise GhostifyError(f"{label}: {where}.{key} is not a finite number ({str(value)[:40]!r})")
    return float(value)


def _positive(obj: dict[str, Any], key: str, where: str, label: str) -> float:
    value = _number(obj, key, where, label)
    if value <= 0:
        raise GhostifyError(f"{label}: {where}.{key} must be > 0, got {value:g}")
    return value


def _find(obj: dict[str, Any], key: str, label: str) -> tuple[Any, str] | None:
    """``key`` at the top level, else in ``totals``, else in exactly one sub-object."""
    if key in obj:
        return obj[key], key
    if isinstance(obj.get("totals"), dict) and key in obj["totals"]:
        return obj["totals"][key], f"totals.{key}"
    hits = [(v[key], f"{k}.{key}") for k, v in obj.items() if isinstance(v, dict) and key in v]
    if len(hits) > 1 and len({json.dumps(h[0]) for h in hits}) > 1:
        raise GhostifyError(f"{label}: ambiguous: {', '.join(h[1] for h in hits)} all give {key}")
    return hits[0] if hits else None


def _from_object(obj: dict[str, Any], label: str) -> dict[str, float]:
    """The gate figures one JSON object provides (validated)."""
    figures: dict[str, float] = {}
    totals = obj.get("totals")
    if totals is not None:
        if not isinstance(totals, dict):
            raise GhostifyError(f"{label}: 'totals' is not an object")
        if "macs_before" in totals or "macs_after" in totals:
            figures["macs_reduction"] = (_positive(totals, "macs_before", "totals", label)
                                         / _positive(totals, "macs_after", "totals", label))
        if "params_before" in totals or "params_after" in totals:
            figures["params_reduction"] = (_positive(totals, "params_before", "totals", label)
                                           / _positive(totals, "params_after", "totals", label))
    found = _find(obj, "latency_ratio", label)
    if found is not None:
        holder = {"latency_ratio": found[0]}
        figures["latency_ratio"] = _positive(holder, "latency_ratio", found[1].rpartition(".")[0] or "report", label)
    found = _find(obj, "accuracy_drop", label)
    if found is not None and found[0] is None and found[1] == "int8.accuracy_drop":
        found = None  # an int8 check without labels measured no accuracy: the figure is absent, not bad
    if found is not None:
        figures["accuracy_drop"] = _number({"accuracy_drop": found[0]}, "accuracy_drop", "report", label)
    else:
        for holder, where in ((obj, "report"), (obj.get("finetune"), "finetune")):
            if isinstance(holder, dict) and holder.get("student_acc") is not None \
                    and holder.get("teacher_acc") is not None:
                figures["accuracy_drop"] = (_number(holder, "teacher_acc", where, label)
                                            - _number(holder, "student_acc", where, label))
                break
    return figures


def _from_json_lines(text: str, label: str) -> dict[str, float]:
    """Finetune metrics (JSON lines): one JSON object a line; the last one with both accuracies counts."""
    last: dict[str, Any] | None = None
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            raise GhostifyError(f"{label}: not JSON (line {i} of a JSON-lines file does not parse)") from None
        if not isinstance(record, dict):
            raise GhostifyError(f"{label}: line {i} is not a JSON object")
        if record.get("student_acc") is not None and record.get("teacher_acc") is not None:
            last = record
    if last is None:
        return {}
    return {"accuracy_drop": _number(last, "teacher_acc", "metrics", label)
            - _number(last, "student_acc", "metrics", label)}


def read_figures(path: str | os.PathLike) -> dict[str, float]:
    """Every gate figure the report at ``path`` provides; GhostifyError if it is not a report."""
    path = Path(path)
    label = str(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise GhostifyError(f"{label}: no such file") from None
    except OSError as exc:
        raise GhostifyError(f"{label}: cannot be read ({exc.strerror or exc})") from None
    if path.is_dir():
        raise GhostifyError(f"{label}: is a directory, expected a JSON report")
    if size > MAX_REPORT_BYTES:
        raise GhostifyError(f"{label}: {size / 2**20:.0f} MB is too large to be a ghostify report")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise GhostifyError(f"{label}: cannot be read ({exc.strerror or exc})") from None
    if not raw.strip():
        raise GhostifyError(f"{label}: the file is empty")
    if zipfile.is_zipfile(path):  # a .ghost archive: its recipe carries the convert totals
        try:
            with zipfile.ZipFile(path) as zf:
                raw = zf.read("recipe.json")
        except (zipfile.BadZipFile, KeyError, OSError, ValueError, NotImplementedError, zlib.error, EOFError):
            raise GhostifyError(f"{label}: a zip file without a readable recipe.json, not a report") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise GhostifyError(f"{label}: not a JSON report (binary data)") from None
    try:
        obj = json.loads(text)
    except ValueError:
        figures = _from_json_lines(text, label) if "\n" in text.strip() else None
        if figures is None:
            raise GhostifyError(f"{label}: not valid JSON") from None
    except RecursionError:
        raise GhostifyError(f"{label}: JSON nested too deeply to be a report") from None
    else:
        if not isinstance(obj, dict):
            raise GhostifyError(f"{label}: a JSON {type(obj).__name__}, expected an object (a ghostify report)")
        figures = _from_object(obj, label)
    if not figures:
        raise GhostifyError(f"{label}: no figure to gate on (expected totals.macs_*/params_* of a convert report, "
                            "latency_ratio of a bench report, finetune accuracies, or the accuracies of an int8 "
                            "export checked on labelled data)")
    return figures


def run_gates(paths: list[str | os.PathLike], thresholds: dict[str, float | None]) -> list[GateResult]:
    """Evaluate every gate with a threshold against the figures of ``paths`` (later reports win)."""
    wanted = {k: v for k, v in thresholds.items() if v is not None}
    unknown = set(wanted) - set(GATES)
    if unknown:
        raise GhostifyError(f"unknown gates: {', '.join(sorted(unknown))}")
    if not wanted:
        raise GhostifyError("no gate given", param="thresholds",
                            hint="give at least one threshold of " + ", ".join(GATES))
    if not paths:
        raise GhostifyError("no report given", param="paths")
    for key, value in wanted.items():
        if not math.isfinite(value):
            raise InvalidValueError(key, f"must be a finite number, got {value}")
        if GATES[key].unit == "x" and value <= 0:
            raise InvalidValueError(key, f"must be > 0, got {value:g}")
    figures: dict[str, tuple[float, str]] = {}
    for path in paths:
        for key, value in read_figures(path).items():
            figures[key] = (value, str(path))
    results = []
    for key, threshold in wanted.items():
        gate = GATES[key]
        if key not in figures:
            raise GhostifyError(f"no report given has the {gate.label} figure (it comes from {gate.source})",
                                param=key)
        value, source = figures[key]
        passed = value >= threshold if gate.minimum else value <= threshold
        results.append(GateResult(gate, value, float(threshold), passed, source))
    return results
