"""Latency verdicts and the shipped-precision choice, on synthetic timings (no timing in the assertions)."""

from __future__ import annotations

import random

import pytest

from factory.latency import (
    Band,
    Latency,
    LatencySettings,
    interleaved,
    latency_band,
    order_statistic_interval,
    ratio,
    verdict,
)


def _latency(rounds_p50: list[float], noise_band: float = 0.1) -> Latency:
    band = latency_band(rounds_p50, noise_band)
    return Latency(p50=band.median, low=band.low, high=band.high, rounds_p50=rounds_p50, p90=max(rounds_p50),
                   p99=max(rounds_p50), mean=sum(rounds_p50) / len(rounds_p50), std=0.0, runs=30 * len(rounds_p50),
                   batch_size=1, threads=2, provider="CPUExecutionProvider")


def test_order_statistic_interval_reaches_its_coverage():
    x = list(range(1, 11))  # n = 10: [x(2), x(9)] covers 97.9%, [x(3), x(8)] only 89%
    assert order_statistic_interval(x, 0.95) == Band(5.5, 2, 9)
    assert order_statistic_interval(x, 0.85) == Band(5.5, 3, 8)
    assert order_statistic_interval([3.0, 1.0, 2.0], 0.95) == Band(2.0, 1.0, 3.0)  # too few: min and max


def test_noise_band_widens_a_narrow_interval_but_never_narrows_a_wide_one():
    steady = latency_band([2.0] * 10, noise_band=0.25)
    assert (steady.low, steady.high) == (1.5, 2.5)
    noisy = latency_band([1.0, 2, 2, 2, 2, 2, 2, 2, 2, 9.0], noise_band=0.25, confidence=0.999)
    assert noisy.low == 1.0 and noisy.high == 9.0


@pytest.mark.parametrize(("rounds", "limit", "expected"), [
    ([1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.0], 2.0, "met"),
    ([3.0, 3.2, 2.9, 3.1, 3.0, 2.95, 3.05], 2.0, "not met"),
    ([1.9, 2.0, 2.1, 1.95, 2.05, 2.0, 2.0], 2.0, "inconclusive"),
    ([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.9], 1.05, "inconclusive"),  # within the 10% noise band of the limit
])
def test_latency_verdict(rounds, limit, expected):
    assert _latency(rounds).verdict(limit) == expected


def test_verdict_edges():
    assert verdict(Band(1.0, 0.9, 2.0), 2.0) == "met"
    assert verdict(Band(3.0, 2.0, 4.0), 2.0) == "inconclusive"
    assert verdict(Band(3.0, 2.01, 4.0), 2.0) == "not met"


def test_verdicts_agree_while_the_machine_drifts():
    """Five measurements of one file on a machine whose speed drifts by 20% between measurements: the
    absolute figures move, the verdict against a limit outside the noise does not."""
    rng = random.Random(0)
    verdicts = set()
    for drift in (1.0, 1.2, 0.95, 1.1, 1.18):
        rounds = [1.0 * drift * rng.uniform(0.95, 1.08) for _ in range(10)]
        verdicts.add(_latency(rounds, noise_band=0.25).verdict(2.0))
    assert verdicts == {"met"}


def test_ratio_is_taken_round_by_round_so_drift_cancels():
    drift = [1.0, 1.6, 0.9, 1.3, 1.1, 1.5, 1.0, 1.2]
    fp32 = _latency([4.0 * d for d in drift])
    int8 = _latency([2.0 * d * (1.02 if i % 2 else 0.98) for i, d in enumerate(drift)])
    r = ratio(fp32, int8)
    assert r.high < 1 and r.low > 0.45 and r.high < 0.55
    assert "faster" in r.text("FP32", "INT8")
    with pytest.raises(ValueError, match="measure the files together"):
        ratio(fp32, _latency([1.0, 2.0]))


def _file_bench(name: str, precision: str, rounds: list[float]):
    from factory.stages.bench import FileBench

    lat = _latency(rounds)
    return FileBench(model="distilled", file=name, precision=precision, accuracy=0.9, test_images=10, latency=lat,
                     latency_batch=lat, size_mb=1.0)


def _bench(*files):
    from factory.latency import HostLoad
    from factory.stages.bench import Benchmarks

    return Benchmarks(files=list(files), threads=2, provider="CPUExecutionProvider", host={},
                      load=HostLoad(0.0, 0.0, 0.0, 0.0, 2), session_options={}, noise_band=0.1)


def test_shipped_precision_does_not_switch_within_the_noise():
    from factory.decide.ship import choose_precision

    rng = random.Random(1)
    drift = [rng.uniform(0.8, 1.4) for _ in range(10)]
    fp32 = _file_bench("model.onnx", "fp32", [2.0 * d * rng.uniform(0.96, 1.04) for d in drift])
    # INT8 a hair slower on some rounds, faster on others: no switch away from the quantized preset
    int8 = _file_bench("model.int8.onnx", "int8", [2.0 * d * rng.uniform(0.97, 1.05) for d in drift])
    ships, why = choose_precision(_bench(fp32, int8), fp32, int8, None)
    assert ships is int8 and "within the noise" in why
    # FP32 faster beyond the noise in every round: switch
    slow = _file_bench("model.int8.onnx", "int8", [2.6 * d for d in drift])
    ships, why = choose_precision(_bench(fp32, slow), fp32, slow, None)
    assert ships is fp32 and "slower" in why and "shipping FP32" in why
    ships, why = choose_precision(_bench(fp32, slow), fp32, slow, None, max_size_mb=0.5)
    assert ships is fp32  # both files (1 MB here) are over the size limit: the faster one
    slow.size_mb = 0.25
    ships, why = choose_precision(_bench(fp32, slow), fp32, slow, None, max_size_mb=0.5)
    assert ships is slow and "over budget.max_size_mb" in why
    fast = _file_bench("model.int8.onnx", "int8", [1.0 * d for d in drift])
    ships, why = choose_precision(_bench(fp32, fast), fp32, fast, None)
    assert ships is fast and "faster than FP32" in why


def test_interleaved_rounds_rotate_the_order():
    calls = []
    settings = LatencySettings(rounds=3, warmup=0, runs=1, min_time_s=0)
    times = interleaved([lambda: calls.append("a"), lambda: calls.append("b"), lambda: calls.append("c")], settings)
    assert "".join(calls) == "abcbcacab"
    assert [len(t) for t in times] == [3, 3, 3]
