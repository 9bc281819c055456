"""The device budget, declared once: each limit (:data:`LIMITS`) is a recipe field of ``budget`` read against one
plain measure of a model (:class:`Measures`), and :func:`check_budget` gives one :class:`BudgetCheck` per limit
set and measured. The candidate listing, the named student's early stop, the ship rule, the refit, the gate, the
CLI and the report all read these checks; each consumer only says which verdicts it accepts (the listing wants
a latency band wholly under its limit, the ship rule and the gate fail only what is not met).

A new limit is a :class:`BudgetConfig` field, a :data:`LIMITS` row and a :class:`Measures`
field read in :meth:`Measures.of`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from pydantic import Field, field_validator

from factory.config import Section, role
from factory.errors import RecipeError
from factory.fields import Band, Number, Strict, Verdict
from factory.profiles import PROFILES, DeviceProfile

if TYPE_CHECKING:
    from factory.latency import Latency

CHANGES_NO_RESULT = True


class BudgetConfig(Section):
    """The recipe's ``budget`` section: the device profile and each limit a shipped model must meet."""

    profile: str | DeviceProfile = Field("x86-avx2", description=f"device profile: one of {', '.join(PROFILES)}, "
                                         "or a mapping spelling one out (the fields of factory.profiles.DeviceProfile)")
    latency_ms: float | None = Field(None, gt=0, description="max p50 latency at batch 1",
                                     json_schema_extra=role("report"))
    threads: int | None = Field(None, ge=1, le=256, description="threads for latency; default: the profile's")
    max_size_mb: float | None = Field(None, gt=0, json_schema_extra=role("report"))
    max_params: int | None = Field(None, gt=0, json_schema_extra=role("report"))
    max_macs: int | None = Field(None, gt=0, description="max multiply-accumulates per image",
                                 json_schema_extra=role("report"))
    max_memory_mb: float | None = Field(None, gt=0, description="max peak resident memory (MB) of a process that "
                                        "loads the shipped model and runs it once", json_schema_extra=role("report"))
    min_accuracy: float | None = Field(None, ge=0.0, le=1.0, json_schema_extra=role("report"))
    measured: list[Path] = Field(
        default_factory=list, description="`factory bench --json` files measured on the profile's device; their "
        "latencies replace this host's for the architectures they cover when choosing a student",
        json_schema_extra=role("selection"))

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str | DeviceProfile) -> str | DeviceProfile:
        if isinstance(value, str) and value not in PROFILES:
            raise ValueError(f"unknown device profile {value!r}; choose one of: {', '.join(PROFILES)}, or spell one "
                             "out (name, threads, machine, ...)")
        return value

    @field_validator("measured")
    @classmethod
    def _measured_exist(cls, value: list[Path]) -> list[Path]:
        from factory.measured import read_bench_file

        for path in value:
            if not path.expanduser().is_file():
                raise ValueError(f"measured latency file {str(path)!r} does not exist; write one on the device with "
                                 "`factory bench MODEL.onnx ... --json FILE`")
            try:
                read_bench_file(path.expanduser())  # the reader the listing uses: refused now, not ignored later
            except RecipeError as err:
                raise ValueError(str(err)) from None
        return [p.expanduser().resolve() for p in value]

    def device(self):
        """The :class:`~factory.profiles.DeviceProfile` this budget targets."""
        from factory.profiles import get_profile

        return get_profile(self.profile)



@dataclass(frozen=True)
class Limit:
    field: str
    """The ``budget`` field of the recipe that sets it."""
    measure: str
    """The :class:`Measures` attribute it bounds."""
    name: str
    """The check's name in the report, the summary and the gate's message."""
    unit: str
    short: str
    """How a miss names the measure: 'params 11.7M > 5M'."""
    show: Callable[[float], str]
    floor: bool = False
    """The measure must be at least the limit (an accuracy floor), not at most."""


def _millions(x: float) -> str:
    return f"{x / 1e6:.3g}M"


def _mb(x: float) -> str:
    return f"{x:.3g} MB"


LIMITS: tuple[Limit, ...] = (
    Limit("latency_ms", "latency", "latency_ms (p50, batch 1)", "ms", "latency", lambda x: f"{x:g} ms"),
    Limit("max_size_mb", "size_mb", "max_size_mb", "MB", "size", _mb),
    Limit("max_params", "params", "max_params", "", "params", _millions),
    Limit("max_macs", "macs", "max_macs", "", "MACs", _millions),
    Limit("max_memory_mb", "peak_memory_mb", "max_memory_mb", "MB", "peak memory", _mb),
    Limit("min_accuracy", "accuracy", "min_accuracy", "", "accuracy", lambda x: f"{x * 100:.1f}%", floor=True),
)
"""Every limit a budget can set, in the order reports list them."""


@dataclass(frozen=True)
class Measures:
    """What a budget is checked against; a measure left None is not checked (a candidate has no accuracy yet)."""

    params: int | None = None
    macs: int | None = None
    size_mb: float | None = None
    latency: Latency | None = None
    """The p50 at batch 1 with its band: a band straddling the limit is inconclusive."""
    peak_memory_mb: float | None = None
    """Peak resident memory of a process that loads the model and runs it once."""
    accuracy: float | None = None

    @classmethod
    def of(cls, model, accuracy: float | None) -> Measures:
        """``model`` (a :class:`factory.decide.ship.Deployed`: trained, exported and benchmarked) at the precision
        it would ship; ``accuracy``: validation accuracy when choosing, test accuracy when reporting."""
        ships = model.ships
        return cls(params=model.trained.result.params, macs=model.macs, size_mb=ships.size_mb,
                   latency=ships.latency, peak_memory_mb=ships.peak_memory_mb, accuracy=accuracy)


class BudgetCheck(Strict):
    """One limit checked on one model."""

    name: str
    field: str = ""
    """The recipe's ``budget`` field that sets the limit."""
    limit: Number
    value: Number
    """The model's measure, in ``unit``."""
    unit: str
    verdict: Verdict
    met: bool
    band: Band | None = None
    """The latency's median (``value``) and band (latency checks only)."""
    miss: str = ""
    """One short line when not met ('params 11.7M > 5M'), empty when met."""
    excess: float = 0.0
    """How far past the limit, as a fraction of it (0 when met): ranks near misses."""

    def value_text(self) -> str:
        """The measured value, with its band when it has one."""
        text = f"{self.value:.4g}" if isinstance(self.value, float) else f"{self.value}"
        if self.band is not None:
            text += f" ({self.band.low:.3g}-{self.band.high:.3g})"
        return text

    def limit_text(self) -> str:
        """The limit with its unit."""
        return f"{self.limit}{self.unit and ' ' + self.unit}"


def check_budget(budget: BudgetConfig, measures: Measures) -> list[BudgetCheck]:
    """Every limit of ``budget`` that is set, checked on the measure ``measures`` has for it."""
    checks = []
    for limit in LIMITS:
        bound, value = getattr(budget, limit.field), getattr(measures, limit.measure)
        if bound is not None and value is not None:
            checks.append(_check(limit, bound, value))
    return checks


def _check(limit: Limit, bound: Number, value) -> BudgetCheck:
    if limit.measure == "latency":
        verdict, band = value.verdict(bound), Band(p50=value.p50, low=value.low, high=value.high)
        p50, excess = value.p50, max(value.high / bound - 1, 0.0)
        miss = f"latency {value.band_text()} {verdict} under {bound:g} ms"
    else:
        ok = value >= bound if limit.floor else value <= bound
        verdict, band, p50 = "met" if ok else "not met", None, value
        excess = 0.0 if ok else (bound / max(value, 1e-12) if limit.floor else value / bound) - 1
        miss = f"{limit.short} {limit.show(value)} {'<' if limit.floor else '>'} {limit.show(bound)}"
    if verdict == "met":
        miss, excess = "", 0.0
    return BudgetCheck(name=limit.name, field=limit.field, limit=bound, value=p50, unit=limit.unit, verdict=verdict,
                       met=verdict == "met", miss=miss, excess=max(excess, 1e-6) if miss else 0.0, band=band)


def not_met(checks: list[BudgetCheck], strict_latency: bool = False) -> list[BudgetCheck]:
    """The checks failed: those not met and, with ``strict_latency``, the inconclusive ones (a latency band that
    straddles its limit)."""
    return [c for c in checks if c.verdict == "not met" or (strict_latency and c.verdict == "inconclusive")]


def meets(budget: BudgetConfig, measures: Measures) -> bool:
    """Whether ``measures`` meet every limit of ``budget`` they can be checked against, latency bands wholly under
    their limit."""
    return all(c.met for c in check_budget(budget, measures))
