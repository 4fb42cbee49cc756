"""The paper's weights/FLOPs tables (GhostNet Tables 3-7), rebuilt and re-counted by ghostify.

Every Ghost model here is an output of the generic conversion pass, ``ghostify.convert`` (no
hand-written Ghost-VGG or Ghost-ResNet); GhostNet itself is ``ghostify.models.create``.
FLOPs are counted as the paper counts them (:data:`ghostify.report.counting.CONVENTION`):
multiply-accumulates of convolution and linear layers with BatchNorm folded. Weights are all
parameters (BatchNorm's affine parameters included; they change no row's rounding).

Which convolutions the paper converted is decided from its own evidence, per table:

* Tables 3-5 (CIFAR): §4.1.2 says "all the convolutional layers in these two models are
  replaced", and the rounded figures agree (VGG-16 s=3/4 and d=1/3 round to the paper's only if
  the stem is converted too), so ``GhostConfig(keep_stem=False)``.
* Table 6 (ResNet-50): the authors' public Ghost-ResNet-50
  (huawei-noah/Efficient-AI-Backbones, ``ghostnet_pytorch/ghost_resnet.py``) keeps the 7x7 stem
  as a plain convolution and replaces every bottleneck and downsample convolution, so
  ``GhostConfig(keep_stem=True)``.

Each row also carries the other stem policy's figures (``alt``), so the choice is visible.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ghostify.policy import GhostConfig
from ghostify.report.counting import CONVENTION, count_macs, count_params

__all__ = ["PaperRow", "PaperTables", "TABLE_TITLES", "FLOPS_UNIT", "FLOPS_SCALE", "build_tables", "row_specs",
           "format_figure", "format_diff", "COMMAND"]

COMMAND = "ghostify paper --out-dir docs --force"

TABLE_TITLES = {
    "3": "Table 3. Ghost-VGG-16 on CIFAR-10, s=2, varying d",
    "4": "Table 4. Ghost-VGG-16 on CIFAR-10, d=3, varying s",
    "5": "Table 5. VGG-16 and ResNet-56 on CIFAR-10",
    "6": "Table 6. ResNet-50 on ImageNet",
    "7": "Table 7. Small networks on ImageNet",
}
FLOPS_UNIT = {"3": "M", "4": "M", "5": "M", "6": "B", "7": "M"}
FLOPS_SCALE = {"M": 1e6, "B": 1e9}  # a FLOPS_UNIT in FLOPs

CIFAR_POLICY = "every convolution, stem included (§4.1.2: 'all the convolutional layers ... are replaced')"
RESNET50_POLICY = ("every convolution but the 7x7 stem, as the authors' public ghost_resnet.py "
                   "(huawei-noah/Efficient-AI-Backbones)")

# The bars: (weights tolerance %, FLOPs tolerance %) for the rows it names.
BARS: dict[tuple[str, str, str], tuple[float | None, float | None]] = {
    **{("4", "Ghost-VGG-16", f"s={s}, d=3"): (4.0, 4.0) for s in (2, 3, 4, 5)},
    ("5", "Ghost-ResNet-56", "s=2, d=3"): (5.0, 5.0),
    ("6", "Ghost-ResNet-50", "s=2, d=3"): (None, 4.0),
    ("6", "Ghost-ResNet-50", "s=4, d=3"): (None, 4.0),
    ("7", "GhostNet 0.5×", "α=0.5"): (3.0, 5.0),
    ("7", "GhostNet 1.0×", "α=1.0"): (3.0, 5.0),
    ("7", "GhostNet 1.3×", "α=1.3"): (3.0, 5.0),
}

# Rows of Tables 5-7 that ghostify cannot build: pruning / search results without a public
# architecture we can construct offline, or networks in neither torchvision nor timm.
NOT_BUILT: list[tuple[str, str, str]] = [
    ("5", "ℓ1-VGG-16, SBP-VGG-16, CP-ResNet-56, ℓ1-ResNet-56, AMC-ResNet-56",
     "pruned networks: their per-layer widths are results of those methods, not published architectures"),
    ("6", "Thinet, NISP, Versatile, SSS, Shift, Taylor-FO-BN, Slimmable 0.5×, MetaPruning ResNet-50",
     "pruned / re-designed ResNet-50 variants not available in torchvision or timm"),
    ("7", "ShuffleNetV1 (0.5×, 1.0×), MobileNetV1 0.5×, MobileNetV2 0.6×, FE-Net, FBNet-B, ProxylessNAS",
     "not available in torchvision or timm at these widths"),
]


@dataclass
class PaperRow:
    """One row: the paper's figures beside ghostify's count."""

    table: str
    model: str
    setting: str
    build: str
    paper_weights_m: float | None
    paper_flops: float | None  # in the table's unit (FLOPS_UNIT)
    flops_unit: str
    weights: int = 0
    flops: int = 0
    weights_diff_pct: float | None = None
    flops_diff_pct: float | None = None
    converted: str = ""  # "k/n convolutions" for Ghost rows
    policy: str = ""
    alt: dict[str, Any] | None = None
    bar: dict[str, Any] | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PaperTables:
    rows: list[PaperRow]
    convention: str = CONVENTION
    command: str = COMMAND
    not_built: list[dict[str, str]] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        tables: dict[str, Any] = {}
        for r in self.rows:
            t = tables.setdefault(r.table, {"title": TABLE_TITLES[r.table], "flops_unit": FLOPS_UNIT[r.table],
                                            "rows": []})
            t["rows"].append(r.to_dict())
        return {"command": self.command, "convention": self.convention,
                "weights": "all parameters (BatchNorm affine included)",
                "policies": {"tables_3_4_5": CIFAR_POLICY, "table_6": RESNET50_POLICY},
                "tables": tables, "not_built": self.not_built, "versions": self.versions}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    def to_markdown(self) -> str:
        lines = ["# GhostNet paper tables, rebuilt by ghostify", "",
                 f"Generated by `{self.command}` — do not edit by hand.", "",
                 f"- **FLOPs**: {self.convention}.",
                 "- **Weights**: all parameters (BatchNorm affine included).",
                 "- **Ghost rows** are `ghostify.convert(...)` outputs (the generic pass), never hand-written "
                 "networks; GhostNet rows are `ghostify.models.create(...)`.",
                 f"- **Tables 3–5 policy**: {CIFAR_POLICY}.",
                 f"- **Table 6 policy**: {RESNET50_POLICY}.",
                 "- *alt* = the same row under the other stem policy; Δ = (ours − paper) / paper; "
                 "*bar* = the tolerance the issue set for that row.",
                 f"- Versions: {', '.join(f'{k} {v}' for k, v in self.versions.items())}.", ""]
        for table in TABLE_TITLES:
            rows = [r for r in self.rows if r.table == table]
            if not rows:
                continue
            unit = FLOPS_UNIT[table]
            lines += [f"## {TABLE_TITLES[table]}", "",
                      f"| Model | Setting | Weights paper (M) | ours (M) | Δ | FLOPs paper ({unit}) | ours ({unit}) "
                      "| Δ | Converted | alt: weights / FLOPs | bar | Note |",
                      "|---|---|---:|---:|---:|---:|---:|---:|---|---|---|---|"]
            for r in rows:
                alt = ""
                if r.alt:
                    alt_flops = r.alt["flops"] / FLOPS_SCALE[unit]
                    alt = f"{r.alt['policy']}: {r.alt['weights'] / 1e6:.2f} M / {alt_flops:.3g} {unit}"
                bar = ""
                if r.bar:
                    bar = ("✅ " if r.bar["ok"] else "❌ ") + r.bar["text"]
                lines.append("| " + " | ".join([
                    r.model, r.setting, format_figure(r.paper_weights_m), f"{r.weights / 1e6:.3f}",
                    format_diff(r.weights_diff_pct), format_figure(r.paper_flops), f"{r.flops / FLOPS_SCALE[unit]:.4g}",
                    format_diff(r.flops_diff_pct), r.converted, alt, bar, r.note.replace("|", "/")]) + " |")
            lines.append("")
        if self.not_built:
            lines += ["## Rows not built", "", "| Table | Rows | Why |", "|---|---|---|"]
            lines += [f"| {n['table']} | {n['rows']} | {n['why']} |" for n in self.not_built]
            lines.append("")
        return "\n".join(lines)


def format_figure(v: float | None) -> str:
    """A paper figure as the paper prints it ("–" where it gives none)."""
    return "–" if v is None else f"{v:g}"


def format_diff(v: float | None) -> str:
    """A difference from the paper, in % with its sign ("–" where there is nothing to compare)."""
    return "–" if v is None else f"{v:+.1f}%"


def _diff(ours: float, paper: float | None) -> float | None:
    return None if paper is None else round(100.0 * (ours - paper) / paper, 2)


# -- how each row is built ------------------------------------------------------------------------
@dataclass
class _Spec:
    table: str
    model: str
    setting: str
    build: str
    paper_weights_m: float | None
    paper_flops: float | None
    factory: Callable[[], nn.Module]
    input_size: tuple[int, int, int]
    ghost: tuple[int, int, bool] | None = None  # (s, d, keep_stem) for a converted row
    note: str = ""

    @property
    def source(self) -> str:
        """The model spec the row starts from (a Ghost row's build is convert(<source>, ...))."""
        return self.build.removeprefix("convert(").split(",")[0]


def _resnet50() -> nn.Module:
    import torchvision

    return torchvision.models.resnet50(weights=None)


def _ghostify(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        from ghostify.models import create

        return create(name, **kwargs)
    return make


def _timm(name: str) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False)
    return make


def _torchvision(name: str) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None)
    return make


CIFAR = (3, 32, 32)
IMAGENET = (3, 224, 224)


def row_specs() -> list[_Spec]:
    """Every row ghostify builds, with the paper's figures (the inputs of the comparison)."""
    vgg, r56 = _ghostify("vgg16_cifar", num_classes=10), _ghostify("resnet56_cifar", num_classes=10)
    specs: list[_Spec] = []
    t3 = {1: (7.6, 157), 3: (7.7, 158), 5: (7.7, 160), 7: (7.7, 163)}
    t4 = {2: (7.7, 158), 3: (5.2, 107), 4: (4.0, 80), 5: (3.3, 65)}
    for table, settings in (("3", [(2, d, *t3[d]) for d in (1, 3, 5, 7)]),
                            ("4", [(s, 3, *t4[s]) for s in (2, 3, 4, 5)])):
        specs.append(_Spec(table, "VGG-16", "baseline", "ghostify:vgg16_cifar", 15.0, 313, vgg, CIFAR))
        for s, d, w, f in settings:
            specs.append(_Spec(table, "Ghost-VGG-16", f"s={s}, d={d}",
                               f"convert(ghostify:vgg16_cifar, GhostConfig(s={s}, d={d}, keep_stem=False))",
                               w, f, vgg, CIFAR, (s, d, False)))
    specs += [
        _Spec("5", "VGG-16", "baseline", "ghostify:vgg16_cifar", 15.0, 313, vgg, CIFAR),
        _Spec("5", "Ghost-VGG-16", "s=2, d=3", "convert(ghostify:vgg16_cifar, GhostConfig(s=2, d=3, keep_stem=False))",
              7.7, 158, vgg, CIFAR, (2, 3, False)),
        _Spec("5", "ResNet-56", "baseline", "ghostify:resnet56_cifar", 0.85, 125, r56, CIFAR),
        _Spec("5", "Ghost-ResNet-56", "s=2, d=3",
              "convert(ghostify:resnet56_cifar, GhostConfig(s=2, d=3, keep_stem=False))",
              0.43, 63, r56, CIFAR, (2, 3, False)),
        _Spec("6", "ResNet-50", "baseline", "torchvision:resnet50", 25.6, 4.1, _resnet50, IMAGENET),
    ]
    for s, w, f in ((2, 13.0, 2.2), (4, 6.5, 1.2)):
        specs.append(_Spec("6", "Ghost-ResNet-50", f"s={s}, d=3",
                           f"convert(torchvision:resnet50, GhostConfig(s={s}, d=3, keep_stem=True))",
                           w, f, _resnet50, IMAGENET, (s, 3, True)))
    # Table 7: GhostNet, plus the competitors torchvision/timm can build (reference rows, no bar)
    t7: list[tuple[str, str, str, float, float, Callable[[], nn.Module]]] = [
        ("MobileNetV2 0.35×", "timm:mobilenetv2_035", "", 1.7, 59, _timm("mobilenetv2_035")),
        ("ShuffleNetV2 0.5×", "torchvision:shufflenet_v2_x0_5", "", 1.4, 41, _torchvision("shufflenet_v2_x0_5")),
        ("MobileNetV3 Small 0.75×", "timm:mobilenetv3_small_075", "", 2.4, 44, _timm("mobilenetv3_small_075")),
        ("GhostNet 0.5×", "ghostify:ghostnet_050", "α=0.5", 2.6, 42, _ghostify("ghostnet_050")),
        ("ShuffleNetV2 1.0×", "torchvision:shufflenet_v2_x1_0", "", 2.3, 146, _torchvision("shufflenet_v2_x1_0")),
        ("MobileNetV3 Large 0.75×", "timm:mobilenetv3_large_075", "", 4.0, 155, _timm("mobilenetv3_large_075")),
        ("GhostNet 1.0×", "ghostify:ghostnet_100", "α=1.0", 5.2, 141, _ghostify("ghostnet_100")),
        ("MobileNetV2 1.0×", "torchvision:mobilenet_v2", "", 3.5, 300, _torchvision("mobilenet_v2")),
        ("ShuffleNetV2 1.5×", "torchvision:shufflenet_v2_x1_5", "", 3.5, 299, _torchvision("shufflenet_v2_x1_5")),
        ("MnasNet-A1", "timm:semnasnet_100", "", 3.9, 312, _timm("semnasnet_100")),
        ("MobileNetV3 Large 1.0×", "timm:mobilenetv3_large_100", "", 5.4, 219, _timm("mobilenetv3_large_100")),
        ("GhostNet 1.3×", "ghostify:ghostnet_130", "α=1.3", 7.3, 226, _ghostify("ghostnet_130")),
    ]
    for model, build, setting, w, f, factory in t7:
        note = "" if build.startswith("ghostify:") else "reference row (competitor, built from its library)"
        specs.append(_Spec("7", model, setting or "reference", build, w, f, factory, IMAGENET, note=note))
    return specs


def _convert(model: nn.Module, s: int, d: int, keep_stem: bool) -> nn.Module:
    from ghostify.conversion import convert

    return convert(model, config=GhostConfig(s=s, d=d, keep_stem=keep_stem))


def _kept_note(converted: nn.Module) -> tuple[str, str]:
    """'k/n' converted convolutions and a note naming every convolution left alone, with why."""
    from ghostify.plan import get_plan

    plan = get_plan(converted)
    kept = [layer for layer in plan.layers if not layer.converted]
    note = "; ".join(f"{layer.name} kept: {layer.reason}" for layer in kept)
    return f"{len(plan.layers) - len(kept)}/{len(plan.layers)}", note


def _resnet50_weight_note(baseline: nn.Module, s: int, paper_m: float) -> str:
    """Why the paper's Ghost-ResNet-50 weight count cannot be reached (Eq. 5 bound)."""
    convs = [m for name, m in baseline.named_modules() if isinstance(m, nn.Conv2d) and name != "conv1"]
    conv_w = sum(m.weight.numel() for m in convs)
    rest = count_params(baseline) - conv_w
    floor = rest + conv_w / s
    need = conv_w / max(paper_m * 1e6 - rest, 1.0)
    return (f"paper's {paper_m} M is not reproducible: Eq. 5 bounds each layer's compression by s={s}, so "
            f"weights >= {rest / 1e6:.2f} M not converted (fc, stem, BN) + {conv_w / 1e6:.2f} M conv weights / s "
            f"= {floor / 1e6:.2f} M; {paper_m} M would need x{need:.2f} on the conv weights")


_Counts = tuple[int, int, str, str]  # weights, FLOPs, "k/n" converted, the note on the layers kept


def _measure(spec: _Spec, keep_stem: bool | None, cache: dict[tuple, _Counts]) -> _Counts:
    """Count the row's model (converted with ``keep_stem`` for a Ghost row), once per source and setting."""
    key = (spec.source, spec.ghost[:2] if spec.ghost else None, keep_stem)
    if key not in cache:
        model = spec.factory().eval()
        conv_info = ("", "")
        if spec.ghost is not None:
            model = _convert(model, spec.ghost[0], spec.ghost[1], bool(keep_stem)).eval()
            conv_info = _kept_note(model)
        x = torch.randn(1, *spec.input_size)
        cache[key] = (count_params(model), count_macs(model, x).total, *conv_info)
    return cache[key]


def build_tables(tables: list[str] | None = None, progress: Callable[[int, int, str], None] | None = None,
                 models: list[str] | None = None, alt: bool = True) -> PaperTables:
    """Build and count every row of ``tables`` (default: 3, 4, 5, 6, 7), or only the rows of ``models``.

    ``alt=False`` skips the other stem policy's figures (half the work for Ghost rows).
    ``progress(done, total, text)`` is called before each row (text: the row) and once at the end.
    """
    wanted = set(tables or TABLE_TITLES)
    specs = [s for s in row_specs() if s.table in wanted and (models is None or s.model in models)]
    rows: list[PaperRow] = []
    cache: dict[tuple, _Counts] = {}
    torch.manual_seed(0)
    for done, spec in enumerate(specs):
        if progress is not None:
            progress(done, len(specs), f"Table {spec.table}: {spec.model} {spec.setting}")
        unit = FLOPS_UNIT[spec.table]
        row = PaperRow(spec.table, spec.model, spec.setting, spec.build, spec.paper_weights_m, spec.paper_flops,
                       unit, note=spec.note)
        if spec.ghost is None:
            row.weights, row.flops, _, _ = _measure(spec, None, cache)
        else:
            s, d, keep_stem = spec.ghost
            row.weights, row.flops, row.converted, kept = _measure(spec, keep_stem, cache)
            row.policy = RESNET50_POLICY if spec.table == "6" else CIFAR_POLICY
            if alt:
                aw, af, aconv, _ = _measure(spec, not keep_stem, cache)
                row.alt = {"policy": "stem kept" if not keep_stem else "stem converted", "weights": aw, "flops": af,
                           "converted": aconv, "weights_diff_pct": _diff(aw / 1e6, spec.paper_weights_m),
                           "flops_diff_pct": _diff(af / FLOPS_SCALE[unit], spec.paper_flops)}
            notes = [kept] if kept else []
            if spec.table == "6":
                notes.append(_resnet50_weight_note(_resnet50(), s, spec.paper_weights_m or 0.0))
            row.note = "; ".join(n for n in [row.note, *notes] if n)
        row.weights_diff_pct = _diff(row.weights / 1e6, spec.paper_weights_m)
        row.flops_diff_pct = _diff(row.flops / FLOPS_SCALE[unit], spec.paper_flops)
        tol = BARS.get((spec.table, spec.model, spec.setting))
        if tol is not None:
            checks = []
            if tol[0] is not None:
                checks.append(("weights", tol[0], abs(row.weights_diff_pct or 0.0) <= tol[0]))
            if tol[1] is not None:
                checks.append(("FLOPs", tol[1], abs(row.flops_diff_pct or 0.0) <= tol[1]))
            row.bar = {"ok": all(c[2] for c in checks),
                       "text": ", ".join(f"{what} ±{t:g}%" for what, t, _ in checks),
                       "checks": {what: {"tolerance_pct": t, "ok": ok} for what, t, ok in checks}}
        rows.append(row)
    if progress is not None:
        progress(len(specs), len(specs), "")
    not_built = [{"table": t, "rows": r, "why": w} for t, r, w in NOT_BUILT if t in wanted]
    return PaperTables(rows=rows, not_built=not_built, versions=_versions())


def _versions() -> dict[str, str]:
    from ghostify._version import __version__

    out = {"ghostify": __version__, "torch": torch.__version__.split("+")[0]}
    for mod in ("torchvision", "timm"):
        try:
            out[mod] = __import__(mod).__version__.split("+")[0]
        except Exception:  # optional libraries: a missing one only drops its version
            pass
    return out
