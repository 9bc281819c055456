"""The student selection's part of the report (also what ``factory students --json`` writes): every candidate
measured, the search among them, and the candidate table shared by report.md and ``factory students``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from factory.decide.types import Contender
from factory.fields import Band, Strict

if TYPE_CHECKING:
    from factory.decide.listing import StudentListing

CHANGES_NO_RESULT = True


class Candidate(Strict):
    architecture: str
    chosen: bool
    fits: bool
    admitted: bool
    pareto: bool
    prior_top1: float | None
    prior_weights: str | None
    params: int
    macs: int
    size_mb: float | None
    precision: str
    latency_ms: Band | None
    latency_source: str
    misses: list[str]
    excess: float
    error: str | None


class Search(Strict):
    winner: str
    rule: str
    rung_epochs: list[int]
    eta: int
    finalists: str
    wall_s: float
    flops: float
    epochs_spent: float
    regime_prior: str
    winner_distill_wall_s: float
    contenders: list[Contender]


class Selection(Strict):
    profile: str
    profile_description: str
    threads: int
    host_stands_in: bool
    stand_in: str
    rounds: int
    noise_band: float
    rule: str
    priors_source: str
    regime_prior: str
    admitted: list[str]
    choice: str | None
    candidates: list[Candidate]
    search: Search | None = None


def selection_of(listing: StudentListing, chosen: str | None = None) -> Selection:
    """The measured candidates of ``listing``; ``chosen``: the build's choice, if any."""
    from factory.decide.listing import listing_summary

    return Selection.model_validate(listing_summary(listing, chosen))


CANDIDATE_COLUMNS = ("candidate", "ImageNet top-1", "params M", "MMACs", "size MB", "p50 ms (band)", "latency from",
                     "fits", "admitted")


def candidate_table(selection: Selection, only: list[str] | None = None) -> list[list[str]]:
    """One row of cells (:data:`CANDIDATE_COLUMNS`) per candidate, or per candidate named in ``only``, in its
    order; ``*`` marks the Pareto front."""
    rows = selection.candidates
    if only is not None:
        rows = sorted((r for r in rows if r.architecture in only), key=lambda r: only.index(r.architecture))
    return [[f"{r.architecture}{' (chosen)' if r.chosen else ''}{' *' if r.pareto else ''}",
             "unknown" if r.prior_top1 is None else f"{r.prior_top1:.1f}%",
             f"{r.params / 1e6:.2f}", f"{r.macs / 1e6:.1f}", "-" if r.size_mb is None else f"{r.size_mb:.2f}",
             "-" if r.latency_ms is None else r.latency_ms.text(), r.latency_source,
             "yes" if r.fits else r.error or "; ".join(r.misses), "yes" if r.admitted else ""]
            for r in rows]
