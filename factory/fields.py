"""Building blocks of typed results and of the report's schema: numbers, verdicts, a strict model."""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict

CHANGES_NO_RESULT = True

Number = Union[int, float]
"""An int stays an int (a parameter count), a float a float (a latency)."""
Verdict = Literal["met", "not met", "inconclusive"]


STRICT = ConfigDict(extra="forbid")
"""Unknown keys are an error, so a stored result or a report and its type cannot drift apart: the config of
:class:`Strict` and of the pydantic dataclasses that stages and decisions return and the report renders as
they are."""


class Strict(BaseModel):
    """A part of the report that exists only in the report (unknown keys are an error, :data:`STRICT`)."""

    model_config = STRICT


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
