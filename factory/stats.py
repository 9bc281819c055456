"""Paired comparisons of two models on the same images: how decisions are made on evidence, not on a point
estimate. Both models see the same validation images, so their difference is judged image by image, where
the images' own difficulty cancels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import beta

CONFIDENCE = 0.9


@dataclass(frozen=True)
class Interval:
    """A difference (``a`` minus ``b``) and its ``confidence`` interval, on ``n`` paired images."""

    value: float
    low: float
    high: float
    confidence: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def points(self) -> str:
        """e.g. '+1.4 points (90% interval -0.7 to +3.5, 144 images)'"""
        return (f"{self.value * 100:+.1f} points ({self.confidence:.0%} interval {self.low * 100:+.1f} to "
                f"{self.high * 100:+.1f}, {self.n} images)")


def accuracy_drop(a_correct: np.ndarray, b_correct: np.ndarray, confidence: float = CONFIDENCE) -> Interval:
    """Top-1 accuracy of ``a`` minus that of ``b`` on the same images, with an exact interval.

    Only the discordant images carry information: given ``m`` of them, the number ``k`` where ``a`` is right
    and ``b`` wrong is Binomial(m, p) and the difference is (2p - 1) m / n. The Clopper-Pearson interval of
    p (two-sided at ``confidence``, so each bound is one-sided at (1 + confidence) / 2) maps to the
    difference's interval."""
    a, b = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    n = len(a)
    k, m = int((a & ~b).sum()), int((a ^ b).sum())
    if m == 0:
        return Interval(0.0, 0.0, 0.0, confidence, n)
    tail = (1 - confidence) / 2
    p_low = beta.ppf(tail, k, m - k + 1) if k > 0 else 0.0
    p_high = beta.ppf(1 - tail, k + 1, m - k) if k < m else 1.0
    scale = m / n
    return Interval((2 * k - m) / n, float((2 * p_low - 1) * scale), float((2 * p_high - 1) * scale), confidence, n)


def mean_difference(a: np.ndarray, b: np.ndarray, confidence: float = CONFIDENCE, resamples: int = 2000,
                    seed: int = 0) -> Interval:
    """Mean of ``a - b`` over paired images (per-image losses or correctness) and its paired bootstrap
    interval (percentile, seeded: the same inputs give the same interval)."""
    diff = np.asarray(a, float) - np.asarray(b, float)
    n = len(diff)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, n, (resamples, n))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Interval(float(diff.mean()), float(low), float(high), confidence, n)
