"""The typed results decisions produce and the report renders as they are: declared once, torch-free (pydantic
dataclasses, unknown keys refused)."""

from __future__ import annotations

from dataclasses import field

from pydantic.dataclasses import dataclass

from factory.fields import STRICT

CHANGES_NO_RESULT = True


@dataclass(config=STRICT)
class RungScore:
    """One short distillation of a search contender, scored on the validation split."""

    epochs: int
    seed: int
    nll: float
    accuracy: float
    wall_s: float
    cached: bool


@dataclass(config=STRICT)
class Contender:
    """A candidate in the student search (:mod:`factory.decide.search`) and its scores rung by rung."""

    architecture: str
    family: str
    regime_prior: float | None
    imagenet_top1: float | None
    latency_p50: float | None
    scores: list[RungScore] = field(default_factory=list)
    left_at: int | None = None
    """Epochs of the rung after which it left the search (None: the winner)."""


@dataclass(config=STRICT)
class ShipOption:
    """A trained model as the ship rule (:mod:`factory.decide.ship`) saw it."""

    name: str
    precision: str
    val_accuracy: float
    misses: list[str]
    """The budget checks it does not meet (an inconclusive latency is not a miss, as for the gate)."""
