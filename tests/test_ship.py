"""Which model ships: the best on validation among those meeting the budget, or the distilled student."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from factory.stage import Done
from factory.latency import Latency, latency_band
from factory.budget import BudgetConfig
from factory.stages.bench import FileBench
from factory.decide.ship import Deployed, choose_shipped

LABELS = [i % 4 for i in range(80)]


def _latency(p50: float) -> Latency:
    band = latency_band([p50] * 5, 0.1)
    return Latency(p50=p50, low=band.low, high=band.high, rounds_p50=[p50] * 5, p90=p50, p99=p50, mean=p50, std=0,
                   runs=50, batch_size=1, threads=2, provider="CPUExecutionProvider")


def _model(name: str, wrong: int, p50: float = 1.0, params: int = 1_000_000, size_mb: float = 1.0,
           role: str = "baseline") -> Deployed:
    """A model whose shipped INT8 file gets the first ``wrong`` validation images wrong."""
    predictions = [(y + 1) % 4 if i < wrong else y for i, y in enumerate(LABELS)]
    bench = FileBench(model=name, file="model.int8.onnx", precision="int8", accuracy=0.0, test_images=10,
                      latency=_latency(p50), latency_batch=_latency(p50), size_mb=size_mb)
    nll = [2.0 if i < wrong else 0.2 for i in range(len(LABELS))]
    export = Done("export", name, None, SimpleNamespace(val_labels=LABELS, val_predictions={"model.int8.onnx": predictions},
                                                          val_nll={"model.int8.onnx": nll}), 1.0)
    trained = Done("distill", name, None, SimpleNamespace(params=params), 1.0)
    return Deployed(name, role, trained, export, bench, bench, bench, "int8 faster", macs=10_000_000)


def test_a_better_baseline_ships_and_the_margin_is_paired():
    models = [_model("distilled", 12, role="student"), _model("pretrained-finetuned", 2), _model("scratch", 20)]
    shipped = choose_shipped(models, BudgetConfig(latency_ms=5.0), "best")
    assert shipped.model.name == "pretrained-finetuned" and shipped.runner_up == "distilled"
    assert abs(shipped.margin.value - 10 / 80) < 1e-9 and shipped.margin.excludes_zero  # 10 more images right
    assert "chosen on validation" in shipped.why and "distilled next by validation accuracy: +12.5 points" in shipped.why
    assert "outside the noise" in shipped.why and not shipped.decision.tie


def test_ship_distilled_overrides_and_the_budget_rules_out_the_rest():
    models = [_model("distilled", 12, role="student"), _model("pretrained-finetuned", 2),
              _model("teacher", 0, p50=9.0, params=20_000_000, role="teacher")]
    budget = BudgetConfig(latency_ms=5.0, max_params=5_000_000)
    assert choose_shipped(models, budget, "best").model.name == "pretrained-finetuned"  # the teacher misses it
    options = {o.name: o for o in choose_shipped(models, budget, "best").options}
    assert options["teacher"].misses == ["latency_ms (p50, batch 1)", "max_params"]
    shipped = choose_shipped(models, budget, "distilled")
    assert shipped.model.name == "distilled" and "ship: distilled" in shipped.why
    assert shipped.margin.value < 0  # it ships though the finetuned model is better: the report says by how much


def test_ties_go_to_the_faster_model_and_nothing_meeting_the_budget_ships_the_best():
    models = [_model("distilled", 4, p50=2.0, role="student"), _model("scratch", 4, p50=1.0)]
    assert choose_shipped(models, BudgetConfig(), "best").model.name == "scratch"
    shipped = choose_shipped(models, BudgetConfig(min_accuracy=0.99), "best")
    assert shipped.model.name == "scratch" and "no model meets every budget check" in shipped.why
    assert np.isclose(shipped.margin.value, 0.0)


def test_the_test_split_never_decides():
    """The benchmarked test accuracy is in every model's files, but only validation decides."""
    models = [_model("distilled", 2, role="student"), _model("scratch", 20)]
    models[1].ships.accuracy, models[0].ships.accuracy = 0.99, 0.10  # scratch is far better on test
    shipped = choose_shipped(models, BudgetConfig(), "best")
    assert shipped.model.name == "distilled"
