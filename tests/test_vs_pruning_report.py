"""The comparison bench's arithmetic: the pruning front at a latency, the bar rows, and the job list."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.vs_pruning_report import _at_latency, fmnist_bars, fmnist_summary  # noqa: E402


def test_front_interpolates_between_measured_points() -> None:
    acc, where = _at_latency([(1.0, 80.0), (3.0, 90.0)], None, 2.0)
    assert where == "interpolated" and acc == pytest.approx(85.0)


def test_a_slower_less_accurate_point_is_not_on_the_front() -> None:
    # (2.0, 70) is dominated by the faster (1.0, 80): the front runs 1.0 -> 3.0
    acc, _ = _at_latency([(1.0, 80.0), (2.0, 70.0), (3.0, 90.0)], None, 2.0)
    assert acc == pytest.approx(85.0)


def test_the_baseline_dominates_a_slower_model() -> None:
    acc, where = _at_latency([(1.0, 80.0)], (2.0, 89.0), 2.5)
    assert acc == 89.0 and where.startswith("the baseline")


def _row(method: str, s: int, acc: float, r: int | None = None, latency_row: str | None = None) -> dict:
    row = {"method": method, "s": s, "zero_shot": acc, "after_200_steps": acc, "after_1_epoch": acc}
    if r is not None:
        row["round_to"] = r
    if latency_row:
        row["latency_row"] = latency_row
    return row


def test_bars_use_the_extra_pruned_points_and_report_per_ghost_model() -> None:
    lat = {"original": 4.0, "ghost-s2": 3.0, "pruned@ghost-s2-r8": 2.0, "pruned@p0.01-r8": 3.5}
    fm = {"baseline": {"test_acc": 90.0},
          "latency": {"rows": {k: {"latency_ms": v, "speedup": 4.0 / v, "macs": 1, "mac_reduction": 1.0, "params": 1}
                               for k, v in lat.items()}},
          "accuracy": {"ghost-s2": {"0": _row("ghost", 2, 86.0)},
                       "magnitude-r8-s2": {"0": _row("magnitude", 2, 80.0, 8)},
                       "magnitude-r8-p0.01": {"0": _row("magnitude", 0, 88.0, 8, "pruned@p0.01-r8")},
                       "unpruned": {"0": _row("unpruned", 0, 90.0)}}}
    summary = fmnist_summary(fm)
    assert summary["magnitude-r8-p0.01"]["latency_ms"] == 3.5
    bars = fmnist_bars(fm, summary)
    # at 3.0: between (2.0, 80) and the measured extra (3.5, 88): 85.33, below the Ghost model's 86
    row = next(r for r in bars["rows"] if r["metric"] == "zero_shot")
    assert row["pruned_acc_at_latency"] == pytest.approx(80 + 8 * (1.0 / 1.5))
    assert row["ghost_ge_pruned"] and bars["met_by_ghost_model"] == {"ghost-s2": True}
    fm["accuracy"]["ghost-s2"]["0"]["after_1_epoch"] = 85.0  # now below the front after 1 epoch
    fm["accuracy"]["ghost-feat-s2"] = {"0": _row("ghost-feat", 2, 86.0, latency_row="ghost-s2")}
    summary = fmnist_summary(fm)
    assert summary["ghost-feat-s2"]["latency_ms"] == 3.0  # another recipe: the s=2 model's latency
    bars = fmnist_bars(fm, summary)
    assert not bars["met"] and bars["met_by_ghost_model"] == {"ghost-feat-s2": True, "ghost-s2": False}


def test_jobs_skip_a_repeated_pruned_model_and_add_the_extras() -> None:
    from bench.vs_pruning import fmnist_jobs, parse

    args = parse(["--only", "fmnist", "--methods", "ghost,magnitude", "--s", "2,3",
                  "--fmnist-round-to", "8", "--fmnist-extra", "16:0.01,16:0.25:34"])
    jobs = fmnist_jobs(args, {(2, 8): 0.2, (3, 8): 0.2})  # s=3 rounds to the s=2 model: once
    assert jobs == [("ghost", 2, None, None, ""), ("ghost", 3, None, None, ""),
                    ("magnitude", 2, 8, 0.2, ""), ("magnitude", 0, 16, 0.01, ""), ("magnitude", 0, 16, 0.25, "34")]
    only_extras = parse(["--only", "fmnist", "--methods", "taylor", "--fmnist-round-to", "",
                         "--fmnist-extra", "8:0.01"])
    assert fmnist_jobs(only_extras, {}) == [("taylor", 0, 8, 0.01, "")]
    from bench.vs_pruning import variant_name

    assert [variant_name(j) for j in jobs] == ["ghost-s2", "ghost-s3", "magnitude-r8-s2", "magnitude-r16-p0.01",
                                               "magnitude-r16-p0.25-l34"]


def test_a_second_cpus_section_judges_with_its_latencies_and_leaves_latency_aware_out() -> None:
    def section(lat: dict[str, float]) -> dict:
        return {"rows": {k: {"latency_ms": v, "speedup": lat["original"] / v, "macs": 1, "mac_reduction": 1.0,
                             "params": 1} for k, v in lat.items()}}

    fm = {"baseline": {"test_acc": 90.0},
          # first CPU: the pruned model is faster than the Ghost model; on the second, slower
          "latency": section({"original": 4.0, "ghost-s2": 3.0, "pruned@ghost-s2-r8": 2.0, "ghost-lat-s2": 3.0}),
          "latency_on": {"b": section({"original": 4.0, "ghost-s2": 2.0, "pruned@ghost-s2-r8": 3.0,
                                       "ghost-lat-s2": 1.0})},
          "accuracy": {"ghost-s2": {"0": _row("ghost", 2, 86.0)}, "ghost-lat-s2": {"0": _row("ghost-lat", 2, 86.0)},
                       "magnitude-r8-s2": {"0": _row("magnitude", 2, 87.0, 8)},
                       "unpruned": {"0": _row("unpruned", 0, 90.0)}}}
    first = fmnist_bars(fm, fmnist_summary(fm))
    assert first["met_by_ghost_model"] == {"ghost-lat-s2": False, "ghost-s2": False}
    other = fmnist_summary(fm, "b")
    assert other["ghost-lat-s2"]["latency_ms"] is None  # that CPU would choose other layers: never trained
    bars = fmnist_bars(fm, other, "b")
    # at 2.0 on the second CPU every pruned model is slower: the fastest one's 87 is still above 86
    assert bars["met_by_ghost_model"] == {"ghost-s2": False}
    fm["accuracy"]["magnitude-r8-s2"]["0"] = _row("magnitude", 2, 85.0, 8)
    assert fmnist_bars(fm, fmnist_summary(fm, "b"), "b")["met_by_ghost_model"] == {"ghost-s2": True}


def test_an_extra_that_names_its_convolutions_prunes_only_those() -> None:
    pytest.importorskip("torch_pruning")  # the [compare] extra: bench/vs_pruning.py only
    from bench.transfer_fmnist import vgg_small
    from bench.vs_pruning import FMNIST_SIZE, conv_widths, layer_indices, parse_extra, prune

    r, ratio, layers = parse_extra("16:0.5:12")
    model = prune(vgg_small().eval(), FMNIST_SIZE, ratio, r, layers=layer_indices(layers))
    assert [w[1] for w in conv_widths(model)] == [16, 16, 16, 64, 64]  # convs 1 and 2 halved, the rest kept
    everywhere = prune(vgg_small().eval(), FMNIST_SIZE, ratio, r, layers=layer_indices(parse_extra("16:0.5")[2]))
    assert [w[1] for w in conv_widths(everywhere)] == [16, 16, 16, 32, 32]


def test_a_fashion_mnist_only_file_has_no_empty_224_tables(tmp_path) -> None:
    import argparse

    from bench.vs_pruning_report import report

    out = tmp_path / "vs.json"
    report({"fmnist": {}}, argparse.Namespace(out=str(out)))
    assert "224×224" not in out.with_suffix(".md").read_text()
    report({"latency": {"resnet18": {}}, "fmnist": {}}, argparse.Namespace(out=str(out)))
    assert out.with_suffix(".md").read_text().startswith("## 224×224 models")


def test_widths_set_the_timed_cnn(tmp_path) -> None:
    from bench.vs_pruning import conv_widths, latency_base, parse

    args = parse(["--only", "fmnist-latency", "--widths", "32,64,128", "--latency-section", "x",
                  "--work", str(tmp_path)])
    model, weights = latency_base(args, {})
    assert conv_widths(model) == [[1, 32], [32, 64], [64, 64], [64, 128], [128, 128]]
    assert weights.startswith("untrained")


def test_a_cached_baseline_of_other_widths_is_refused_in_one_line(tmp_path) -> None:
    import pytest
    import torch

    from bench.transfer_fmnist import vgg_small
    from bench.vs_pruning import fmnist_baseline, parse

    torch.save(vgg_small().state_dict(), tmp_path / "fmnist_baseline.pt")
    args = parse(["--only", "fmnist", "--widths", "32,64,128", "--work", str(tmp_path)])
    with pytest.raises(SystemExit, match="other widths"):
        fmnist_baseline(args, {})
