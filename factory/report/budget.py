"""The budget's part of the report: each limit checked on the shipped model, the verdict, and the one line that
says it (shared by report.md and the CLI summary)."""

from __future__ import annotations

from typing import Callable

from factory.report.fields import Number, Strict, Verdict


class BudgetCheck(Strict):
    name: str
    limit: Number
    value: Number
    unit: str
    verdict: Verdict
    met: bool
    low: float | None = None
    """The latency's band (latency checks only)."""
    high: float | None = None

    def value_text(self) -> str:
        """The measured value, with its band when it has one."""
        text = f"{self.value:.4g}" if isinstance(self.value, float) else f"{self.value}"
        if self.low is not None and self.high is not None:
            text += f" ({self.low:.3g}-{self.high:.3g})"
        return text

    def limit_text(self) -> str:
        """The limit with its unit."""
        return f"{self.limit}{self.unit and ' ' + self.unit}"


class BudgetLimits(Strict):
    """The recipe's limits (None: not set)."""

    latency_ms: float | None = None
    max_size_mb: float | None = None
    max_params: int | None = None
    max_macs: int | None = None
    min_accuracy: float | None = None


class Budget(Strict):
    """The budget's verdict for the shipped model: the worst of its checks."""

    verdict: Verdict
    met: bool
    failed: list[str]
    """The checks not met."""
    inconclusive: list[str]
    """The checks whose band straddles the limit."""
    model: str
    profile: str
    profile_description: str
    measured_on: str
    host_matches_profile: bool
    stand_in: str
    checks: list[BudgetCheck]
    limits: BudgetLimits = BudgetLimits()

    def missed(self, strict_latency: bool = False) -> list[BudgetCheck]:
        """The checks the gate fails on: those not met and, with ``strict_latency``, the inconclusive ones."""
        return [c for c in self.checks if c.verdict == "not met" or (strict_latency and c.verdict == "inconclusive")]


def budget_checks_of(checks: list[dict]) -> list[BudgetCheck]:
    """The checks of :func:`factory.stages.ship.budget_checks` as schema models."""
    return [BudgetCheck.model_validate(check) for check in checks]


def verdict_line(budget: Budget, show_verdict: Callable[[str], str] = str) -> str:
    """'<verdict> for <model> (failed: ...) (inconclusive: ...)'; ``show_verdict`` styles the verdict word."""
    return (f"{show_verdict(budget.verdict)} for {budget.model}"
            + (f" (failed: {', '.join(budget.failed)})" if budget.failed else "")
            + (f" (inconclusive: {', '.join(budget.inconclusive)}: the latency band straddles the limit)"
               if budget.inconclusive else ""))
