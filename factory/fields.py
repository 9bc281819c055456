"""Building blocks of typed results and of the report's schema: numbers, verdicts, a strict model."""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict

CHANGES_NO_RESULT = True  # no stage result depends on this module (factory.identity)

Number = Union[int, float]
"""An int stays an int (a parameter count), a float a float (a latency)."""
Verdict = Literal["met", "not met", "inconclusive"]


class Strict(BaseModel):
    """A part of the report: unknown keys are an error, so a report and its schema cannot drift apart."""

    model_config = ConfigDict(extra="forbid")


class Band(Strict):
    """A median latency (ms) and its band."""

    p50: float
    low: float
    high: float

    def text(self) -> str:
        """'p50 (low-high)', as every table shows a latency."""
        return f"{self.p50:.2f} ({self.low:.2f}-{self.high:.2f})"


def percent(share: float | None) -> str:
    """A share as a percentage with one decimal ('-' when unknown)."""
    return "-" if share is None else f"{share * 100:.1f}%"
