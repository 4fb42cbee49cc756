"""Transfer init: Ghost modules start from the convolutions they replace."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ghostify
from ghostify.layers.ghost import GhostModule
from ghostify.transfer import as_calibration_tensor, transfer_init
from ghostify.transfer.assign import choose, slot_capacities


@torch.no_grad()
def _rel(y: torch.Tensor, y0: torch.Tensor) -> float:
    return float(((y - y0) ** 2).sum() / ((y0 - y0.mean(0)) ** 2).sum())


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    m = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 15, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(15), nn.ReLU(),
        nn.Conv2d(15, 12, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 4))
    m.train()
    with torch.no_grad():  # non-trivial BN statistics
        for _ in range(4):
            m(torch.randn(32, 3, 12, 12))
    return m.eval()


def _images(n: int = 48, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 12, 12, generator=g)
    return torch.nn.functional.avg_pool2d(x, 3, 1, 1) * 3  # spatially correlated, like images


def test_slot_capacities_cover_exactly_the_ghosts():
    for n, s in [(16, 2), (15, 2), (7, 3), (10, 4), (12, 4)]:
        m = -(-n // s)
        caps = slot_capacities(n, m, s)
        assert sum(caps) == n - m
        assert all(0 <= c <= s - 1 for c in caps)


def test_choose_finds_duplicate_pairs_and_respects_groups():
    n, s = 8, 2
    E = torch.ones(n, n)
    for i in range(4):  # channel i + 4 is an exact ghost of channel i
        E[i, i + 4] = 0.0
    a = choose(E, n, 4, s)
    assert sorted(a.intrinsic) == [0, 1, 2, 3]
    assert {o: a.intrinsic[k] for o, (k, _) in a.ghost_of.items()} == {4: 0, 5: 1, 6: 2, 7: 3}
    order = a.channel_order(n, 4)
    assert sorted(order.tolist()) == list(range(n))
    # with groups=2 each half of the filters must keep 2 intrinsic maps
    a2 = choose(torch.rand(n, n, generator=torch.Generator().manual_seed(0)), n, 4, s, groups=2)
    assert [o // 4 for o in a2.intrinsic] == [0, 0, 1, 1]


def test_data_free_transfer_is_exact_when_filters_are_ghosts_of_each_other():
    # a bare conv whose filters 4..7 are scaled/shifted copies of 0..3 is exactly a Ghost module
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=True)
    with torch.no_grad():
        conv.weight[4:] = -1.5 * conv.weight[:4]
        conv.weight[[0, 4]] = conv.weight[[4, 0]]  # the ghost comes first: the order must be restored
        conv.bias[[0, 4]] = conv.bias[[4, 0]]
    model = nn.Sequential(conv)
    g = ghostify.convert(model, s=2, d=3, init="transfer", config=ghostify.GhostConfig(keep_stem=False)).eval()
    x = torch.randn(4, 3, 10, 10)
    ghost = g.get_submodule("0")
    assert isinstance(ghost, GhostModule) and ghost.channel_order is not None
    torch.testing.assert_close(g(x), model(x), atol=1e-4, rtol=1e-4)
    assert ghostify.get_plan(g).init == "transfer"
    layer = ghostify.get_plan(g).converted[0]
    assert layer.transfer_fit == "weights" and layer.transfer_error < 1e-6


def test_transfer_beats_random_and_calibration_beats_data_free():
    m = _net()
    x = _images()
    y0 = m(x)
    cfg = ghostify.GhostConfig(s=2, d=3)
    rnd = ghostify.convert(m, config=cfg, init="random").eval()
    free = ghostify.convert(m, config=cfg, init="transfer").eval()
    calib = ghostify.convert(m, config=cfg, init="random")
    plan = ghostify.get_plan(calib)
    transfer_init(m, calib, plan, calibration_data=x, refine_steps=30)
    calib.eval()
    e_rnd, e_free, e_cal = _rel(rnd(x), y0), _rel(free(x), y0), _rel(calib(x), y0)
    assert e_free < e_rnd
    assert e_cal < e_free
    assert all(layer.transfer_fit == "calibration" and 0 <= layer.transfer_error < 1 for layer in plan.converted)
    # the original model is untouched
    torch.testing.assert_close(m(x), y0)


def test_transfer_keeps_train_mode_consistent_with_eval_mode():
    # BN statistics inside the Ghost modules are re-estimated: batch statistics ~ running ones
    m = _net()
    x = _images(64)
    g = ghostify.convert(m, s=2, d=3, init="random")
    transfer_init(m, g, ghostify.get_plan(g), calibration_data=x, refine_steps=0)
    g.eval()
    y_eval = g(x)
    g.train()
    with torch.no_grad():
        y_train = g(x)
    assert _rel(y_train, y_eval) < 0.1


def test_convert_transfer_with_calibration_and_archive_round_trip(tmp_path):
    m = _net()
    x = _images(32)
    g = ghostify.convert(m, s=3, d=3, init="random")
    plan = ghostify.get_plan(g)
    plan.init = "transfer"
    transfer_init(m, g, plan, calibration_data=x[:24], refine_steps=30)
    assert all(layer.transfer_error is not None for layer in plan.converted)
    g.eval()
    path = ghostify.save(g, tmp_path / "m.ghost", source=m, input_size=(3, 12, 12))
    back = ghostify.load(path)
    torch.testing.assert_close(back(x), g(x))
    assert all(mod.channel_order is not None for mod in back.modules() if isinstance(mod, GhostModule))
    # the report surfaces the per-layer error
    from ghostify.report.report import build_report

    rep = build_report(m, g, (3, 12, 12)).to_dict()
    rows = [r for r in rep["layers"] if r["converted"]]
    assert rows and all(r["transfer_error"] is not None and r["transfer_fit"] == "calibration" for r in rows)


def test_calibration_inputs_and_errors():
    x = torch.randn(10, 3, 8, 8)
    assert as_calibration_tensor(x, 4).shape == (4, 3, 8, 8)
    pairs = [(x[i], 0) for i in range(10)]
    assert as_calibration_tensor(pairs).shape == (10, 3, 8, 8)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(10)), batch_size=3)
    assert as_calibration_tensor(loader, 5).shape[0] >= 5
    with pytest.raises(ghostify.GhostifyError):
        as_calibration_tensor(torch.zeros(4, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ghostify.GhostifyError):
        ghostify.convert(_net(), s=2, init="transfer", calibration_data=torch.randn(4, 5, 12, 12))


def test_data_free_with_input_size_fits_on_inputs_distilled_from_batchnorm():
    from ghostify.transfer.synthetic import synthesize_inputs

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
    with torch.no_grad():  # BatchNorm statistics that plain noise does not have
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    model.eval()

    @torch.no_grad()
    def mismatch(x: torch.Tensor) -> float:
        a = model[0](x)
        return float((a.mean((0, 2, 3)) - model[1].running_mean).pow(2).mean())

    noise = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    distilled, steps = synthesize_inputs(model, (3, 8, 8), samples=16, steps=200)
    assert steps == 200  # no deadline: every step runs
    import time

    t0 = time.perf_counter()
    _, steps = synthesize_inputs(model, (3, 8, 8), samples=16, steps=10**6, seconds=0.5)  # a deadline holds
    assert 1 <= steps < 10**6 and time.perf_counter() - t0 < 5
    assert distilled.shape == (16, 3, 8, 8)
    assert mismatch(distilled) < 0.2 * mismatch(noise)
    assert all(p.requires_grad for p in model.parameters())  # the model is left as it was

    ghost = ghostify.convert(model, s=2, d=3, init="transfer", input_size=(3, 8, 8))
    fits = {layer.transfer_fit for layer in ghostify.get_plan(ghost).converted}
    assert fits == {"synthetic"}
    without = ghostify.convert(model, s=2, d=3, init="transfer")  # no input size: weight-space fit
    assert {layer.transfer_fit for layer in ghostify.get_plan(without).converted} == {"weights"}


def test_calibration_samples_sets_how_many_inputs_are_distilled_or_read(monkeypatch):
    import ghostify.transfer as transfer

    seen: list[int] = []
    real = transfer.synthesize_inputs

    def spy(model, input_size, samples=256, *args, **kwargs):
        seen.append(samples)
        return real(model, input_size, samples, 5)

    monkeypatch.setattr(transfer, "synthesize_inputs", spy)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 16, 3, padding=1)).eval()
    ghostify.convert(model, s=2, init="transfer", input_size=(3, 8, 8), calibration_samples=12)
    assert seen == [12]
    reads: list[int | None] = []
    real_batches = transfer.calibration_batches
    monkeypatch.setattr(transfer, "calibration_batches",
                        lambda data, samples, chunk: reads.append(samples) or real_batches(data, samples, chunk))
    ghostify.convert(model, s=2, init="transfer", calibration_data=torch.randn(20, 3, 8, 8), calibration_samples=6)
    assert reads == [6]
