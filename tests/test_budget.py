"""The budget declared once: every limit checked on plain measures by one function."""

from __future__ import annotations

import dataclasses

import pytest

from factory.budget import LIMITS, Measures, check_budget, meets, not_met
from factory.latency import Latency, Memory, latency_band
from factory.budget import BudgetConfig
from factory.report.budget import BudgetLimits


def _latency(p50: float, noise: float = 0.1) -> Latency:
    band = latency_band([p50] * 5, noise)
    return Latency(p50=p50, low=band.low, high=band.high, rounds_p50=[p50] * 5, p90=p50, p99=p50, mean=p50, std=0,
                   runs=50, batch_size=1, threads=2, provider="CPUExecutionProvider", memory=Memory(80.0, 5.0))


def test_every_limit_is_a_budget_field_a_measure_and_a_report_limit():
    limit_fields = {name for name, f in BudgetConfig.model_fields.items()
                    if name.startswith(("max_", "min_")) or name == "latency_ms"}
    assert {limit.field for limit in LIMITS} == limit_fields
    measures = {f.name for f in dataclasses.fields(Measures)}
    assert {limit.measure for limit in LIMITS} == measures
    assert set(BudgetLimits.model_fields) == limit_fields


def test_each_limit_met_and_not_met():
    budget = BudgetConfig(max_size_mb=2.0, max_params=5_000_000, max_macs=100_000_000, max_memory_mb=100,
                          min_accuracy=0.8, latency_ms=5.0)
    good = Measures(params=4_000_000, macs=90_000_000, size_mb=1.5, latency=_latency(1.0), peak_memory_mb=60.0,
                    accuracy=0.9)
    checks = check_budget(budget, good)
    assert [c.field for c in checks] == [limit.field for limit in LIMITS]
    assert all(c.met and c.miss == "" and c.excess == 0 for c in checks) and meets(budget, good)
    bad = Measures(params=9_000_000, macs=200_000_000, size_mb=4.0, latency=_latency(9.0), peak_memory_mb=150.0,
                   accuracy=0.6)
    misses = {c.field: c for c in not_met(check_budget(budget, bad))}
    assert set(misses) == {limit.field for limit in LIMITS}
    assert misses["max_params"].miss == "params 9M > 5M" and misses["max_macs"].miss == "MACs 200M > 100M"
    assert misses["max_size_mb"].miss == "size 4 MB > 2 MB" and abs(misses["max_size_mb"].excess - 1.0) < 1e-9
    assert misses["max_memory_mb"].miss == "peak memory 150 MB > 100 MB" and misses["max_memory_mb"].unit == "MB"
    assert misses["min_accuracy"].miss == "accuracy 60.0% < 80.0%" and misses["min_accuracy"].excess > 0
    assert misses["latency_ms"].value == 9.0 and misses["latency_ms"].band.low < 9.0 < misses["latency_ms"].band.high


def test_a_latency_band_straddling_the_limit_is_inconclusive_not_met():
    budget = BudgetConfig(latency_ms=5.0)
    (check,) = check_budget(budget, Measures(latency=_latency(4.8)))
    assert check.verdict == "inconclusive" and not check.met and "inconclusive under 5 ms" in check.miss
    assert not_met([check]) == [] and not_met([check], strict_latency=True) == [check]
    assert not meets(budget, Measures(latency=_latency(4.8)))  # the listing wants the band wholly under


@pytest.mark.parametrize("measures", [Measures(), Measures(params=10**9)])
def test_unset_limits_and_missing_measures_are_not_checked(measures):
    assert check_budget(BudgetConfig(max_size_mb=1.0), measures) == []
    assert meets(BudgetConfig(max_size_mb=1.0, latency_ms=1.0), measures)
