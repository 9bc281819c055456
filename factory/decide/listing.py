"""The candidate listing and admission: a decision over the ``select``, ``candidate`` and ``candidate_latency``
stages' results (:mod:`factory.stages.select`). Every candidate's measures are checked against the budget
(:mod:`factory.budget`), device figures (``budget.measured``) replace this host's, and the candidates meeting
every limit (a latency band wholly under the limit) are admitted to the search (:mod:`factory.decide.search`)
once, here, in the order of the regime prior (``priors_regime.csv``, measured by this factory's own recipe on
proxy tasks), at most two per family and at least one plain residual network; timm's ImageNet top-1
(``priors.csv``, a prior of another regime) only orders candidates the regime prior does not cover. Nothing
fits: :class:`NoStudentFits` with the nearest misses.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from factory.budget import Measures, check_budget, meets, not_met
from factory.context import Runtime
from factory.errors import FactoryError, RecipeError
from factory.latency import Latency, LatencySettings
from factory.profiles import DeviceProfile
from factory.stages.select import (
    CandidateLatencyPlan,
    CandidatePlan,
    SelectPlan,
    StudentChoice,
    build_candidate,
    candidate_names,
    measure_candidates,
    select_student,
)

if TYPE_CHECKING:
    from factory.budget import BudgetConfig
    from factory.recipe import Recipe
    from factory.stages.bench import BenchPlan
    from factory.stages.export import ExportPlan

CHANGES_NO_RESULT = True


class NoStudentFits(FactoryError):
    """No candidate student meets every budget limit; ``listing`` holds the measured candidates."""

    exit_code = 8

    def __init__(self, message: str, listing: StudentListing):
        super().__init__(message)
        self.listing = listing


def check_student_fits(choice: StudentChoice, budget: BudgetConfig) -> None:
    """Raise RecipeError when the student's size alone breaks a limit of ``budget`` (its parameters or MACs)."""
    for check in not_met(check_budget(budget, Measures(params=choice.params, macs=choice.macs))):
        raise RecipeError(f"student.model {choice.model!r} at {choice.image_size}px breaks budget.{check.field}: "
                          f"{check.miss}; choose a smaller student"
                          f"{', lower data.image_size' if check.field == 'max_macs' else ''} or raise the limit")


# ---- priors and device measurements -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Prior:
    top1: float | None
    weights: str
    note: str


def accuracy_priors() -> tuple[dict[str, Prior], str]:
    """timm's published ImageNet top-1 of each candidate's default pretrained weights (``priors.csv``) and the
    table's source line."""
    text = resources.files("factory").joinpath("priors.csv").read_text()
    comment = next(line for line in text.splitlines() if line.startswith("#"))
    source = comment.lstrip("# ").removeprefix("source:").strip()
    rows = csv.DictReader(line for line in text.splitlines() if line and not line.startswith("#"))
    priors = {}
    for row in rows:
        architecture = row["name"].split(".")[0]
        priors[architecture] = Prior(float(row["top1"]) if row["top1"] else None, row["name"], row["note"])
    return priors, source


@dataclass(frozen=True)
class DeviceFigure:
    latency: Latency
    source: str


def device_measurements(files: list[Path], image_size: int, precision: str,
                        candidates: dict[str, Path] | None = None) -> dict[str, DeviceFigure]:
    """Latency per architecture from ``factory bench --json`` files measured on the device
    (:func:`factory.measured.read_bench_file`), for this image size and precision; ``candidates``: each
    architecture's exported file, which a figure recording another file's sha256 must not stand in for."""
    from factory.hashing import file_sha256
    from factory.measured import read_bench_file

    figures = {}
    for path in files:
        measured = read_bench_file(path)
        for r in measured.results:
            if r.architecture and r.image_size == image_size and r.precision == precision:
                candidate = (candidates or {}).get(r.architecture)
                own = file_sha256(candidate) if r.sha256 and candidate is not None else r.sha256
                if own != r.sha256:
                    raise RecipeError(f"{path}: its {r.architecture} figure was measured on {r.model} (sha256 "
                                      f"{r.sha256[:12]}), not on the candidate {candidate} (sha256 {own[:12]}); "
                                      "measure the files `factory students --export` writes")
                figures[r.architecture] = DeviceFigure(r.latency_ms, f"measured on {measured.host.cpu} ({Path(path).name})")
    return figures


# ---- admission: the regime prior, families ---------------------------------------------------------------------

REGIME_PRIORS = "priors_regime.csv"
PLAIN_RESIDUAL = re.compile(r"^(resnet\d+[a-z]*|regnetx_\d+|test_resnet)$")
PER_FAMILY = 2


def family(architecture: str) -> str:
    """The architecture's family: its name's leading word with any version (mobilenetv3_large_100 ->
    mobilenetv3, efficientnet_lite0 -> efficientnet, resnet18 -> resnet); timm's toy test_* models are
    each their own."""
    if architecture.startswith("test_"):
        return architecture
    head = architecture.split("_")[0]
    if re.fullmatch(r"[a-z]+v\d+", head):
        return head
    return re.match(r"[a-z]*", head).group(0) or head


@dataclass(frozen=True)
class RegimePrior:
    relative_accuracy: float
    """Distilled test accuracy over the best candidate's on the proxy tasks (1.0 = the best)."""
    int8_drop: float | None


def regime_priors() -> tuple[dict[str, RegimePrior], str]:
    """The regime prior shipped with the factory (``priors_regime.csv``) and its provenance line; empty when
    the package has none."""
    source = resources.files("factory").joinpath(REGIME_PRIORS)
    if not source.is_file():
        return {}, "no regime prior shipped: admission by ImageNet top-1 (a prior of another regime)"
    text = source.read_text()
    provenance = " ".join(line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#"))
    rows = csv.DictReader(line for line in text.splitlines() if line and not line.startswith("#"))
    priors = {r["architecture"]: RegimePrior(float(r["relative_accuracy"]),
                                             float(r["int8_drop"]) if r.get("int8_drop") else None) for r in rows}
    return priors, provenance


def admission_order(rows: list[CandidateRow], regime: dict[str, RegimePrior]) -> list[CandidateRow]:
    """Fitting candidates, best first by the regime prior (relative accuracy less INT8 drop); those it does not
    cover after, by ImageNet top-1, then by measured latency."""
    def key(row: CandidateRow):
        prior = regime.get(row.architecture)
        measured = prior.relative_accuracy - (prior.int8_drop or 0.0) if prior else -math.inf
        return (-measured, -(row.top1 if row.top1 is not None else -math.inf),
                row.latency.p50 if row.latency else math.inf)

    return sorted((r for r in rows if r.fits), key=key)


def admit(rows: list[CandidateRow], regime: dict[str, RegimePrior], max_candidates: int) -> list[CandidateRow]:
    """Up to ``max_candidates`` fitting candidates in admission order, at most two per family, and at least one
    plain residual network when one fits (it replaces the last admitted)."""
    ordered = admission_order(rows, regime)
    admitted, per_family = [], {}
    for row in ordered:
        f = family(row.architecture)
        if len(admitted) < max_candidates and per_family.get(f, 0) < PER_FAMILY:
            admitted.append(row)
            per_family[f] = per_family.get(f, 0) + 1
    residual = next((r for r in ordered if PLAIN_RESIDUAL.match(r.architecture)), None)
    if residual is not None and not any(PLAIN_RESIDUAL.match(r.architecture) for r in admitted):
        admitted[-1] = residual
    return admitted


# ---- the listing and the choice ---------------------------------------------------------------------------------

@dataclass
class CandidateRow:
    architecture: str
    prior: Prior | None
    params: int
    macs: int
    size_mb: float | None
    precision: str
    latency: Latency | None
    latency_source: str
    misses: list[str] = field(default_factory=list)
    excess: float = 0.0
    """How far over its worst limit (value / limit - 1), for ranking near misses."""
    error: str | None = None
    pareto: bool = False
    path: str | None = None
    """The candidate's ONNX file in the stage cache."""

    @property
    def fits(self) -> bool:
        return not self.misses and self.error is None

    @property
    def top1(self) -> float | None:
        return self.prior.top1 if self.prior else None


@dataclass
class StudentListing:
    profile: DeviceProfile
    stands_in: bool
    stand_in_reason: str
    rows: list[CandidateRow]
    admitted: list[str]
    """The fitting candidates the search would admit, in admission order (empty: nothing fits)."""
    rule: str
    priors_source: str
    regime_source: str
    settings: LatencySettings

    def nearest_misses(self, n: int = 5) -> list[CandidateRow]:
        return sorted((r for r in self.rows if r.error is None), key=lambda r: r.excess)[:n]


def check_limits(row: CandidateRow, budget: BudgetConfig) -> None:
    """Fill ``row.misses`` with every budget limit the candidate does not meet (a latency band not wholly under
    the limit counts) and ``row.excess`` with how far past the worst one it is."""
    checks = check_budget(budget, Measures(params=row.params, macs=row.macs, size_mb=row.size_mb,
                                           latency=row.latency))
    row.misses = [c.miss for c in checks if not c.met]
    row.excess = max((c.excess for c in checks), default=0.0)


def mark_pareto_front(rows: list[CandidateRow]) -> None:
    """Mark the candidates no other beats on both prior accuracy (higher) and measured latency (lower)."""
    known = [r for r in rows if r.top1 is not None and r.latency is not None and r.error is None]
    for r in known:
        r.pareto = not any(o is not r and o.top1 >= r.top1 and o.latency.p50 <= r.latency.p50
                           and (o.top1 > r.top1 or o.latency.p50 < r.latency.p50) for o in known)


LISTING_RULE = ("the build ranks the candidates meeting every limit (latency band wholly under the limit) by "
                "distilling them on the task (student.search); listed here in admission order: the regime prior, "
                "then ImageNet top-1 for candidates it does not cover")


def list_students(rt: Runtime, recipe: Recipe, export: ExportPlan, bench: BenchPlan,
                  measured: list[Path] | None = None) -> StudentListing:
    """Measure every candidate for ``recipe``'s budget (module doc): parameters and MACs first, then export,
    quantization (as ``export`` says) and latency (as ``bench`` says) for those whose size can fit."""
    num_classes = rt.data.num_classes
    s, b = recipe.student, recipe.budget
    names = candidate_names(s.candidates, s.exclude)
    device = b.device()
    stands_in, why = device.stand_in()
    size = recipe.data.image_size
    sizes = {n: select_student(rt, SelectPlan(n, size, num_classes)).result for n in names}
    cheap_fit = [n for n in names if meets(b, Measures(params=sizes[n].params, macs=sizes[n].macs))]
    candidates, settings, here = _export_and_measure(rt, export, bench, size, cheap_fit, num_classes)
    exported = {c.result.architecture: c for c in candidates}
    on_device = device_measurements(list(b.measured) + list(measured or []), size,
                                    next(iter(exported.values())).result.precision if exported else "fp32",
                                    {a: c.file(c.result.file) for a, c in exported.items() if c.result.file})
    priors, source = accuracy_priors()
    rows = []
    for name in names:
        c = exported.get(name)
        if name in on_device:
            latency, where = on_device[name].latency, on_device[name].source
        else:
            latency, where = here.get(name), "this host" if stands_in else f"proxy: {why}"
        r = c.result if c else None
        row = CandidateRow(name, priors.get(name), sizes[name].params, sizes[name].macs, r.size_mb if r else None,
                           r.precision if r else "-", latency if c else None, where if c else "-",
                           error=r.error if r else None, path=str(c.file(r.file)) if r and r.file else None)
        check_limits(row, b)
        rows.append(row)
    mark_pareto_front(rows)
    regime, regime_source = regime_priors()
    admitted = [r.architecture for r in admit(rows, regime, s.search.max_candidates)]
    return StudentListing(device, stands_in, why, rows, admitted, LISTING_RULE, source, regime_source, settings)


def _export_and_measure(rt: Runtime, export: ExportPlan, bench: BenchPlan, size: int, names: list[str],
                        num_classes: int):
    """Each candidate exported and quantized as it would ship (cached), and this host's latency of each."""
    from factory.console import progress_bar

    settings = replace(bench.settings(), rounds=max(3, bench.rounds // 2), min_time_s=bench.min_time_s / 2)
    candidates = []
    with progress_bar(transient=True) as bar:
        task = bar.add_task("candidates: export and quantize", total=len(names))
        for name in names:
            plan = CandidatePlan(name, size, num_classes, export.quantize, export.calibration,
                                 export.calibration_images, export.opset)
            candidates.append(build_candidate(rt, plan))
            bar.advance(task)
    here = measure_candidates(rt, CandidateLatencyPlan(settings, bench.host), size, candidates)
    return candidates, settings, here


def no_fit_message(listing: StudentListing, recipe: Recipe) -> str:
    near = "; ".join(f"{r.architecture}: {', '.join(r.misses)}" for r in listing.nearest_misses(3))
    return (f"no candidate student fits the budget of {recipe.name} on {listing.profile.name} (nearest misses: "
            f"{near}); raise a limit, lower data.image_size, or widen student.candidates")


def listing_rows(listing: StudentListing, chosen: str | None = None) -> list[dict]:
    """The listing as plain values, one dict per candidate: admitted ones first in admission order, then the
    rest (for tables, JSON and the report); ``chosen``: the build's choice, if any."""
    def order(r: CandidateRow):
        admitted = listing.admitted.index(r.architecture) if r.architecture in listing.admitted else math.inf
        return (admitted, not r.fits, r.error is not None, -(r.top1 if r.top1 is not None else -1),
                r.latency.p50 if r.latency else math.inf)

    rows = []
    for r in sorted(listing.rows, key=order):
        rows.append({
            "architecture": r.architecture, "chosen": r.architecture == chosen, "fits": r.fits,
            "admitted": r.architecture in listing.admitted, "pareto": r.pareto,
            "prior_top1": r.top1, "prior_weights": r.prior.weights if r.prior else None,
            "params": r.params, "macs": r.macs, "size_mb": r.size_mb, "precision": r.precision,
            "latency_ms": {"p50": r.latency.p50, "low": r.latency.low, "high": r.latency.high} if r.latency else None,
            "latency_source": r.latency_source, "misses": r.misses, "excess": r.excess, "error": r.error,
        })
    return rows


def listing_summary(listing: StudentListing, chosen: str | None = None) -> dict:
    """What the report and ``factory students --json`` record of a listing."""
    p = listing.profile
    return {"profile": p.name, "profile_description": p.description, "threads": listing.settings.threads,
            "host_stands_in": listing.stands_in, "stand_in": listing.stand_in_reason,
            "rounds": listing.settings.rounds, "noise_band": listing.settings.noise_band,
            "rule": listing.rule, "priors_source": listing.priors_source, "regime_prior": listing.regime_source,
            "admitted": listing.admitted, "choice": chosen, "candidates": listing_rows(listing, chosen)}
