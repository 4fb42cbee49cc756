"""The latency-aware policy (ghostify.tune): the timing table and its cache, the budget, the decision.

Timings are real where the test is about the machinery (the cache), and stubbed where it is about
a decision, so that the decision under test does not depend on this machine's noise.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import ghostify
from ghostify.cli import main
from ghostify.policy import GhostConfig
from ghostify.tune import LatencyCache, machine_key, measure_table
from ghostify.tune import policy as tune_policy
from ghostify.tune import table as tune_table
from ghostify.tune.budget import LayerChoices, LayerOption, choose, spectral_sensitivity
from ghostify.tune.table import LayerCase, variants


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),  # "fast" in the stubbed table
        nn.Conv2d(32, 32, 1), nn.BatchNorm2d(32), nn.ReLU(),  # "slow"
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()


def _case(c: int = 8, n: int = 16, size: int = 8) -> LayerCase:
    return LayerCase("conv", nn.Conv2d(c, n, 3, padding=1), (1, c, size, size), 3, nn.ReLU())


def test_the_table_is_read_from_the_cache_on_the_next_run(tmp_path):
    cases = [_case(), _case(8, 24)]
    first = measure_table(cases, 1, LatencyCache(machine_key(1), tmp_path))
    assert (first.measured, first.cached) == (2, 0)
    row = first.timings["conv"]
    assert {"conv", "s2", "s3", "s4"} <= set(row) and all(v > 0 for v in row.values())
    again = measure_table(cases, 1, LatencyCache(machine_key(1), tmp_path))
    assert (again.measured, again.cached) == (0, 2) and again.timings == first.timings
    # another thread count is another machine as far as the timings go: measured again, kept apart
    other = LatencyCache(machine_key(2), tmp_path)
    assert other.path != LatencyCache(machine_key(1), tmp_path).path
    assert measure_table(cases[:1], 2, other).measured == 1
    # a different shape of the same layer is a different key
    assert _case(size=16).key() != _case().key()


def test_a_damaged_cache_is_measured_again(tmp_path):
    cache = LatencyCache(machine_key(1), tmp_path)
    cache.path.write_text("{not json")
    assert measure_table([_case()], 1, LatencyCache(machine_key(1), tmp_path)).measured == 1
    assert json.loads(cache.path.read_text())["machine"] == machine_key(1)


def test_machine_key_names_cpu_isa_runtime_and_threads():
    key = machine_key(4, {"model": "Neoverse-N1", "arch": "aarch64", "isa": ["asimd", "asimddp"]})
    assert key.startswith("Neoverse-N1|aarch64|asimd,asimddp|onnxruntime ") and key.endswith("|threads 4")


def test_each_variant_is_the_layer_in_deployment_form():
    case = _case()
    x = torch.randn(*case.input_shape)
    forms = variants(case)
    assert {"conv", "s2", "s3", "s4"} <= set(forms)
    # s=2 splits into parts (timed apart, as the deployment form keeps them, and concatenated)
    assert isinstance(forms["s2"](x), tuple) and forms["s2_concat"](x).shape == (1, 16, 8, 8)
    assert torch.equal(torch.cat(forms["s2"](x), 1), forms["s2_concat"](x))
    assert forms["s3"](x).shape == (1, 16, 8, 8) and "s3_concat" not in forms  # s=3 does not divide 16: one block
    for name, form in forms.items():
        y = form(x)
        assert (torch.cat(y, 1) if isinstance(y, tuple) else y).shape == (1, 16, 8, 8), name
    assert (forms["conv"](x) >= 0).all()  # the activation that follows the layer is timed with it


def _layer(name: str, keep_ms: float, options: list[tuple[int, float, float]]) -> LayerChoices:
    opts = [LayerOption(1, keep_ms, keep_ms, 0.0)] + [LayerOption(s, ms, ms, sens) for s, ms, sens in options]
    return LayerChoices(name, opts)


def test_the_budget_takes_the_cheapest_accuracy_first():
    robust = _layer("robust", 10.0, [(2, 6.0, 0.01), (4, 4.0, 0.05)])
    fragile = _layer("fragile", 10.0, [(2, 6.0, 0.30), (4, 4.0, 0.60)])
    reached = choose([robust, fragile], total=20.0, target=20.0 / 16.0)  # 4 ms to save
    assert reached >= 1.25 and robust.current.s == 2 and fragile.current.s == 1
    reached = choose([robust, fragile], total=20.0, target=20.0 / 12.0)  # 8 ms: the robust one goes first
    assert reached >= 20.0 / 12.0 - 1e-9 and robust.current.s == 4


def test_an_unreachable_budget_stops_at_the_best_it_can_do():
    a = _layer("a", 10.0, [(2, 8.0, 0.1)])
    slower = _layer("b", 10.0, [(2, 12.0, 0.0)])  # a Ghost module slower than its layer is never chosen
    reached = choose([a, slower], total=20.0, target=3.0)
    assert reached == pytest.approx(20.0 / 18.0) and slower.current.s == 1 and a.current.s == 2


def test_spectral_sensitivity_is_zero_within_rank_and_grows_with_s():
    conv = nn.Conv2d(4, 16, 3, bias=False)
    with torch.no_grad():  # rank 4: m = 16/s intrinsic filters span it exactly for s <= 4
        conv.weight.copy_((torch.randn(16, 4) @ torch.randn(4, 36)).view(16, 4, 3, 3))
    sens = spectral_sensitivity(conv, [2, 4, 8])
    assert sens[2] < 1e-6 and sens[4] < 1e-6 and sens[8] > 0.01
    dense = spectral_sensitivity(nn.Conv2d(16, 32, 3), [2, 3, 4])
    assert 0 < dense[2] < dense[3] < dense[4] < 1


@pytest.fixture
def stubbed_timings(monkeypatch):
    """Layer "3" measures 2x faster as a Ghost module, layer "6" 0.8x; whole models 10 ms -> 9.5 ms
    (so a layer saves alpha = 0.5 / (0.5 - 0.25) = 2x in the graph what it saves alone)."""
    def fake(models, input_shape, threads):
        fast = input_shape[1] == 16
        return {name: 1.0 if name == "conv" else (0.5 if fast else 1.25) for name in models}

    monkeypatch.setattr(tune_table, "_time_variants", fake)
    monkeypatch.setattr(tune_policy, "measure_speedup", lambda *a, **k: {"original_ms": 10.0, "ghost_ms": 9.5,
                                                                         "speedup": 10 / 9.5, "threads": 1, "runs": 1})
    import ghostify.tune as tune

    monkeypatch.setattr(tune, "measure_speedup", tune_policy.measure_speedup)
    monkeypatch.setattr(tune, "measure_side_by_side", lambda original, models, *a, **k: {
        name: tune_policy.measure_speedup(original, m) for name, m in models.items()})


def test_latency_aware_converts_only_what_measures_faster(tmp_path, stubbed_timings):
    config = GhostConfig(latency="measure", cache_dir=str(tmp_path))
    plan = ghostify.convert(small_cnn(), config=config, input_size=(3, 16, 16)).ghostify_plan
    by_name = {layer.name: layer for layer in plan.layers}
    assert by_name["3"].converted and by_name["3"].latency["speedup"] == pytest.approx(2.0)
    assert not by_name["6"].converted and by_name["6"].reason.startswith("measured 0.80x")
    assert plan.latency["anchor"]["alpha"] == pytest.approx(2.0)
    assert plan.latency["predicted_speedup"] == pytest.approx(10 / 9, rel=1e-3)
    assert plan.latency["measured"]["speedup"] == pytest.approx(10 / 9.5) and plan.latency["choice"] == "per layer"


def test_the_whole_model_calibration_is_cached_so_a_budget_decides_the_same_way_again(tmp_path, stubbed_timings,
                                                                                      monkeypatch):
    anchors = iter([9.0, 9.9])  # a second anchor run would calibrate (and so choose) differently

    def measured(original, converted, *a, **k):
        ms = next(anchors) if converted is not None and not hasattr(converted, "ghostify_plan") else 9.5
        return {"original_ms": 10.0, "ghost_ms": ms, "speedup": 10 / ms, "threads": 1, "runs": 1}

    monkeypatch.setattr(tune_policy, "measure_speedup", measured)
    config = GhostConfig(target_speedup=1.05, cache_dir=str(tmp_path))
    first = ghostify.convert(small_cnn(), config=config, input_size=(3, 16, 16)).ghostify_plan
    again = ghostify.convert(small_cnn(), config=config, input_size=(3, 16, 16)).ghostify_plan
    assert not first.latency["anchor"]["cached"] and again.latency["anchor"]["cached"]
    assert again.latency["anchor"]["ghost_ms"] == 9.0 and again.latency["anchor"]["alpha"] == first.latency["anchor"][
        "alpha"]
    assert [(x.name, x.s) for x in again.converted] == [(x.name, x.s) for x in first.converted]
    other = ghostify.convert(small_cnn(), config=config, input_size=(3, 24, 24)).ghostify_plan
    assert not other.latency["anchor"]["cached"]  # another input size is another whole-model timing


def test_a_budget_measured_short_of_its_target_is_chosen_again_calibrated_on_that_measurement(
        tmp_path, stubbed_timings, monkeypatch):
    import ghostify.tune as tune
    from ghostify.report.render import _latency_line

    def run(whole_ms: list[float], cache: str | None = None) -> object:
        times = iter(whole_ms)  # the anchor, the first choice, then (if any) the second

        def measured(original, converted, *a, **k):
            ms = next(times)
            return {"original_ms": 10.0, "ghost_ms": ms, "speedup": 10 / ms, "threads": 1, "runs": 1}

        monkeypatch.setattr(tune_policy, "measure_speedup", measured)
        monkeypatch.setattr(tune, "measure_speedup", measured)
        config = GhostConfig(target_speedup=1.05, cache_dir=str(tmp_path / (cache or str(whole_ms))))
        return ghostify.convert(small_cnn(), config=config, input_size=(3, 16, 16)).ghostify_plan

    plan = run([9.5, 9.9, 9.0])  # first choice 1.01x < 1.05x: a second, measured 1.11x, is kept
    assert plan.latency["first_try"]["measured"]["speedup"] == pytest.approx(10 / 9.9)
    assert plan.latency["anchor"]["recalibrated"] and plan.latency["anchor"]["alpha"] < 2.0
    assert plan.latency["measured"]["speedup"] == pytest.approx(10 / 9.0)
    assert "short of the target, chosen again" in _latency_line(plan)
    plan = run([9.0], cache=str([9.5, 9.9, 9.0]))  # the next conversion starts from that calibration
    assert plan.latency["anchor"]["recalibrated"] == "cached" and "first_try" not in plan.latency
    plan = run([9.5, 9.9, 9.95])  # the second is slower: the first is kept and both are reported
    assert plan.latency["measured"]["speedup"] == pytest.approx(10 / 9.9) and "first_try" not in plan.latency
    assert "not faster: the first kept" in _latency_line(plan)
    assert not plan.latency["target"]["measured_met"] and "target speed-up ×1.05 missed: measured ×1.01" in \
        _latency_line(plan)  # predicted to meet it, measured short: the line does not say "met"
    plan = run([9.5, 9.0])  # the first meets the target: no second try (a third timing would fail here)
    assert "first_try" not in plan.latency and "second_try" not in plan.latency
    assert plan.latency["target"]["measured_met"] and "target speed-up ×1.05 met" in _latency_line(plan)


def test_eq4_wins_where_the_whole_model_measures_faster_side_by_side(tmp_path, stubbed_timings, monkeypatch):
    import ghostify.tune as tune

    runs = []

    def side_by_side(original, models, *a, **k):  # one interleaved run: the per-layer choice and Eq. 4's
        runs.append(list(models))
        ms = {"per layer": 9.8, "eq4": 9.0}
        return {name: {"original_ms": 10.0, "ghost_ms": ms[name], "speedup": 10 / ms[name], "threads": 1, "runs": 1}
                for name in models}

    monkeypatch.setattr(tune, "measure_side_by_side", side_by_side)
    config = GhostConfig(latency="measure", cache_dir=str(tmp_path))
    plan = ghostify.convert(small_cnn(), config=config, input_size=(3, 16, 16)).ghostify_plan
    assert runs == [["per layer", "eq4"]]  # compared in one run, never against a cached timing
    assert plan.latency["choice"].startswith("Eq. 4's policy") and len(plan.converted) == 2
    assert plan.latency["measured"]["speedup"] == pytest.approx(10 / 9.0)
    assert plan.latency["per_layer_measured"]["speedup"] == pytest.approx(10 / 9.8)
    from ghostify.report.render import _latency_line

    line = _latency_line(plan)  # the prediction is the per-layer choice's: both models are named
    assert "per-layer choice predicted" in line and "measured ×1.02" in line
    assert "Eq. 4's model, kept: every candidate converted, measured ×1.11" in line


def test_eq4_is_not_timed_again_when_it_is_the_per_layer_choice(tmp_path, stubbed_timings, monkeypatch):
    import ghostify.tune as tune

    def fast(models, input_shape, threads):  # every candidate measures faster: the choice is Eq. 4's model
        return {name: 1.0 if name == "conv" else 0.5 for name in models}

    monkeypatch.setattr(tune_table, "_time_variants", fast)
    monkeypatch.setattr(tune, "measure_side_by_side", lambda *a, **k: pytest.fail("one model timed as two"))
    plan = ghostify.convert(small_cnn(), config=GhostConfig(latency="measure", cache_dir=str(tmp_path)),
                            input_size=(3, 16, 16)).ghostify_plan
    assert plan.latency["choice"] == "per layer (the same model as Eq. 4's)" and len(plan.converted) == 2


def test_a_speedup_budget_picks_s_per_layer(tmp_path, stubbed_timings):
    config = GhostConfig(target_speedup=1.05, cache_dir=str(tmp_path))
    assert config.latency == "measure"
    plan = ghostify.convert(small_cnn(), config=config, input_size=(3, 16, 16)).ghostify_plan
    assert plan.latency["target"]["met"] and [layer.name for layer in plan.converted] == ["3"]
    out_of_reach = GhostConfig(target_speedup=3.0, cache_dir=str(tmp_path))
    plan = ghostify.convert(small_cnn(), config=out_of_reach, input_size=(3, 16, 16)).ghostify_plan
    assert not plan.latency["target"]["met"] and plan.latency["target"]["predicted"] < 3.0


def test_latency_aware_needs_an_input_size():
    with pytest.raises(ghostify.GhostifyError, match="input_size"):
        ghostify.convert(small_cnn(), config=GhostConfig(latency="measure"))


@pytest.mark.parametrize("kwargs, match", [
    ({"latency": "guess"}, "latency must be"),
    ({"target_speedup": 0.5}, "target_speedup must be a number >= 1"),
    ({"target_speedup": 2.0, "target_macs": 2.0}, "not both"),
])
def test_bad_latency_settings_are_one_clear_error(kwargs, match):
    with pytest.raises(ghostify.GhostifyError, match=match):
        GhostConfig(**kwargs)


def test_cli_latency_aware_reports_prediction_and_measurement(tmp_path, monkeypatch, stubbed_timings, capsys):
    import ghostify.cli.convert as cli_convert

    monkeypatch.setenv("GHOSTIFY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cli_convert, "_load", lambda spec, **kw: _loaded(kw))
    out = tmp_path / "x.ghost"
    rc = main(["convert", "small", "--latency-aware", "--init", "random", "--out", str(out), "--json",
               str(tmp_path / "r.json"), "--width", "200"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "latency-aware predicted ×1.11 · measured ×1.05" in captured.out
    assert "kept: measured 0.80x" in captured.out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["latency"]["shapes_measured"] == 2 and report["layers"][1]["latency"]["speedup"] == 2.0
    rc = main(["convert", "small", "--target-speedup", "0.5", "--init", "random", "--out", str(out), "--force"])
    assert rc == 2 and "--target-speedup must be a number >= 1" in capsys.readouterr().err


def _loaded(kw):
    from ghostify.io.specs import LoadedModel

    return LoadedModel(model=small_cnn(), spec="small", kind="factory", input_size=(3, 16, 16),
                       input_size_source="flag")
