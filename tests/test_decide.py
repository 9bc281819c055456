"""The decision module on synthetic prediction matrices: one notion of noise for every decision."""

from __future__ import annotations

import numpy as np

from factory.decide.noise import Candidate, accuracy_margin, choose, drop_beyond, inside_noise, nll_margin

N = 144  # the embedded default's validation split: 12 images of 12 classes


def _draw(rng: np.random.Generator, accuracy: float, n: int = N) -> tuple[np.ndarray, np.ndarray]:
    """Per image: right or wrong with probability ``accuracy``, and an NLL that is lower when right."""
    correct = rng.random(n) < accuracy
    nll = np.where(correct, rng.exponential(0.3, n), 1.0 + rng.exponential(1.0, n))
    return correct, nll


def _candidate(name: str, correct: np.ndarray, nll: np.ndarray | None = None, latency: float = 1.0) -> Candidate:
    return Candidate(name, correct, np.where(correct, 0.2, 2.0) if nll is None else nll, latency)


def test_a_large_margin_ships_the_true_best():
    rng = np.random.default_rng(0)
    wins = 0
    for _ in range(200):
        models = [_candidate(name, *_draw(rng, acc)) for name, acc in (("a", 0.92), ("b", 0.78), ("c", 0.74))]
        wins += choose(models).chosen == "a"
    assert wins >= 196  # 14 points apart on 144 images: the split almost never gets it wrong


def test_a_margin_inside_the_noise_is_a_tie_that_nll_decides():
    correct = np.arange(N) < 120
    flattered = correct.copy()
    flattered[120:123] = True  # 3 more images right: +2.1 points, inside the noise of 144 paired images
    surer = np.where(correct, 0.05, 1.5)  # the other is far surer of the images both get right
    decision = choose([_candidate("flattered", flattered), _candidate("surer", correct, surer)])
    assert decision.tie and decision.tied == ("flattered",) and decision.chosen == "surer"
    assert inside_noise(decision.margin) and decision.margin.value < 0
    assert not inside_noise(decision.nll) and decision.nll.value > 0
    assert "a tie on validation accuracy" in decision.how_sure() and "decided by validation NLL" in decision.how_sure()


def test_outside_the_noise_accuracy_decides_whatever_the_nll():
    best = np.arange(N) < 130
    worse = np.arange(N) < 100
    decision = choose([_candidate("best", best, np.full(N, 3.0)), _candidate("worse", worse, np.full(N, 0.1))])
    assert decision.chosen == "best" and not decision.tie and not inside_noise(decision.margin)
    assert "outside the noise" in decision.how_sure()


def test_exact_ties_go_to_the_lower_latency():
    same = np.arange(N) < 100
    decision = choose([_candidate("slow", same, latency=2.0), _candidate("fast", same, latency=1.0)])
    assert decision.chosen == "fast" and decision.tie


def test_one_notion_of_noise_for_models_and_for_a_quantized_drop():
    fp32 = np.arange(N) < 120  # FP32 right on 120 of 144 validation images
    noisy = fp32.copy()
    noisy[:3] = False  # 3 images lost: a 2.1-point drop, over the limit as a point estimate
    beyond, drop = drop_beyond(fp32, noisy, 0.01)
    assert not beyond and drop.value > 0.01 and inside_noise(drop, 0.01)
    assert drop == accuracy_margin(fp32, noisy)  # the same interval a ship decision reads
    real = fp32.copy()
    real[:20] = False
    beyond, drop = drop_beyond(fp32, real, 0.01)
    assert beyond and drop.low > 0.01
    real[120:138] = True  # the same 20 lost but 18 others gained: a 1.4-point drop, not shown to exceed 1
    assert not drop_beyond(fp32, real, 0.01)[0]


def test_nll_margin_is_paired_and_signed():
    rng = np.random.default_rng(1)
    base = rng.exponential(0.5, N)
    margin = nll_margin(base, base + 0.2)  # the first is 0.2 nats better on every image
    assert abs(margin.value - 0.2) < 1e-9 and margin.low > 0.19 and not inside_noise(margin)


def test_the_rule_never_reads_beyond_the_validation_arrays():
    """A decision is a function of the per-image validation arrays alone: the same arrays decide the same way
    whatever else the candidates carry (the test split is not an input of :func:`choose`)."""
    rng = np.random.default_rng(2)
    a, b = _draw(rng, 0.85), _draw(rng, 0.83)
    first = choose([_candidate("a", *a), _candidate("b", *b)])
    again = choose([_candidate("b", *b), _candidate("a", *a)])
    assert first == again
