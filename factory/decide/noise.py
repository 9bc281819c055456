"""Every decision between models, made one way: on the validation split, paired image by image, with one
notion of *inside the noise*: a difference is inside the noise when its 90% paired interval
(:mod:`factory.stats`) holds the value it is compared with (0 between two models, the limit for a quantized
model's drop). The student search's finalists, INT8 acceptance and the ship decision all read this module, so
they cannot disagree about it.

The ship rule (:func:`choose`), measured by ``benchmarks/decisions.py``: the best validation accuracy, unless
another model's accuracy is inside the noise of it; then those models tie, and the lowest mean validation
negative log-likelihood among them decides (it scores how sure a model is on every image, not only whether its
top-1 is right, so it varies less from split to split than accuracy); exact ties go to the lower latency.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from factory.stats import CONFIDENCE, Interval, accuracy_drop, mean_difference

__all__ = ["CONFIDENCE", "Candidate", "Decision", "accuracy_margin", "choose", "drop_beyond", "inside_noise",
           "nll_margin"]


def inside_noise(interval: Interval, at: float = 0.0) -> bool:
    """Whether the paired images cannot tell ``interval``'s difference from ``at``: its interval holds ``at``."""
    return interval.low <= at <= interval.high


def accuracy_margin(a_correct: np.ndarray, b_correct: np.ndarray) -> Interval:
    """``a``'s validation accuracy minus ``b``'s, with its paired interval."""
    return accuracy_drop(a_correct, b_correct, CONFIDENCE)


def nll_margin(a_nll: np.ndarray, b_nll: np.ndarray) -> Interval:
    """How much lower ``a``'s mean validation NLL is than ``b``'s (``b`` minus ``a``, nats; positive: ``a`` is
    better), with its paired interval."""
    return mean_difference(b_nll, a_nll, CONFIDENCE)


def drop_beyond(fp32_correct: np.ndarray, quantized_correct: np.ndarray, limit: float) -> tuple[bool, Interval]:
    """Whether a quantized model's top-1 drop from FP32 is beyond ``limit`` outside the noise (the low end of
    the drop's interval above it), and that interval: a drop is rejected only on evidence."""
    drop = accuracy_margin(fp32_correct, quantized_correct)
    return drop.value > limit and not inside_noise(drop, limit), drop


@dataclass(frozen=True)
class Candidate:
    """One model as a decision sees it: per validation image, whether its top-1 is right and its NLL."""

    name: str
    correct: np.ndarray
    nll: np.ndarray
    latency_ms: float = float("inf")

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.correct))

    @property
    def mean_nll(self) -> float:
        return float(np.mean(self.nll))


@dataclass(frozen=True)
class Decision:
    """What :func:`choose` chose and how sure it was."""

    chosen: str
    runner_up: str | None
    margin: Interval | None
    """Chosen minus runner-up validation accuracy (negative when a tie went to a model with lower accuracy)."""
    tied: tuple[str, ...] = ()
    """The other models whose accuracy is inside the noise of the best one (empty: accuracy decided)."""
    nll: Interval | None = None
    """On a tie: how much lower the chosen model's NLL is than the runner-up's (:func:`nll_margin`)."""

    @property
    def tie(self) -> bool:
        return bool(self.tied)

    def how_sure(self) -> str:
        """One sentence for the report's first lines, e.g. 'a tie on validation accuracy with scratch (...)'."""
        if self.runner_up is None or self.margin is None:
            return "no other model to compare"
        if not self.tie:
            return f"{self.runner_up} next by validation accuracy: {self.margin.points()}, outside the noise"
        return (f"a tie on validation accuracy with {', '.join(self.tied)} (against {self.runner_up}: "
                f"{self.margin.points()}, inside the noise), decided by validation NLL: {self.nll_text()}")

    def nll_text(self) -> str:
        n = self.nll
        return (f"{n.value:+.3f} nats lower than {self.runner_up}'s (90% interval {n.low:+.3f} to {n.high:+.3f}, "
                f"{'inside' if inside_noise(n) else 'outside'} the noise)")


def choose(candidates: list[Candidate]) -> Decision:
    """The ship rule (module doc) over ``candidates`` (the models meeting the budget; never empty)."""
    leader = min(candidates, key=lambda c: (-c.accuracy, c.latency_ms))
    others = [c for c in candidates if c is not leader]
    tied = [c for c in others if inside_noise(accuracy_margin(leader.correct, c.correct))]
    if not tied:
        runner_up = min(others, key=lambda c: (-c.accuracy, c.latency_ms), default=None)
        margin = None if runner_up is None else accuracy_margin(leader.correct, runner_up.correct)
        return Decision(leader.name, runner_up and runner_up.name, margin)
    chosen, runner_up = sorted([leader, *tied], key=lambda c: (c.mean_nll, c.latency_ms))[:2]
    return Decision(chosen.name, runner_up.name, accuracy_margin(chosen.correct, runner_up.correct),
                    tuple(c.name for c in [leader, *tied] if c is not chosen),
                    nll_margin(chosen.nll, runner_up.nll))
