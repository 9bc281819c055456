"""The budget's part of the report: each limit checked on the shipped model, the verdict, and the one line that
says it (shared by report.md and the CLI summary)."""

from __future__ import annotations

from typing import Callable

from pydantic import create_model

from factory.budget import LIMITS, BudgetCheck, not_met
from factory.fields import Number, Strict, Verdict

CHANGES_NO_RESULT = True

BudgetLimits = create_model("BudgetLimits", __base__=Strict, __doc__="The recipe's limits (None: not set).",
                            **{limit.field: (Number | None, None) for limit in LIMITS})


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
        """The checks the gate fails on (:func:`factory.budget.not_met`)."""
        return not_met(self.checks, strict_latency)


def verdict_line(budget: Budget, show_verdict: Callable[[str], str] = str) -> str:
    """'<verdict> for <model> (failed: ...) (inconclusive: ...)'; ``show_verdict`` styles the verdict word."""
    return (f"{show_verdict(budget.verdict)} for {budget.model}"
            + (f" (failed: {', '.join(budget.failed)})" if budget.failed else "")
            + (f" (inconclusive: {', '.join(budget.inconclusive)}: the latency band straddles the limit)"
               if budget.inconclusive else ""))
