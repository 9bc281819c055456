"""Which file ships: each trained model at the precision it would ship (:func:`choose_precision`), checked
against every budget limit, and the best of them on the validation split (``ship: best``), or always the
distilled student (``ship: distilled``). The decision and its margin over the runner-up (a paired interval on
the same validation images) are what the report opens with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from factory.cache import Done
from factory.stages.bench import Benchmarks, FileBench
from factory.stages.export import Exported
from factory.stats import Interval, accuracy_drop
from factory.train import TrainedModel

if TYPE_CHECKING:
    from factory.recipe import BudgetConfig


@dataclass
class Deployed:
    """One trained model through export, quantization and benchmarks, and the precision it would ship at."""

    name: str
    role: str
    """'student' (the distilled one), 'baseline' or 'teacher'."""
    trained: Done[TrainedModel]
    export: Done[Exported]
    fp32: FileBench
    quantized: FileBench | None
    ships: FileBench
    why: str
    macs: int

    def val_correct(self, file: str | None = None) -> np.ndarray:
        """Per validation image, whether the top-1 of ``file`` (default: the shipped precision's) is right."""
        e = self.export.result
        return np.asarray(e.val_predictions[file or self.ships.file]) == np.asarray(e.val_labels)


def deployed(name: str, role: str, trained: Done[TrainedModel], export: Done[Exported], bench: Benchmarks,
             macs: int, max_size_mb: float | None = None) -> Deployed:
    """One model's files as benchmarked, and the precision it would ship at (:func:`choose_precision`)."""
    fp32 = bench.of(name, "model.onnx")
    quant = export.result.quantization
    quantized = bench.of(name, quant.file) if quant is not None and quant.file is not None else None
    ships, why = choose_precision(bench, fp32, quantized, quant.reason if quant else None, max_size_mb)
    return Deployed(name, role, trained, export, fp32, quantized, ships, why, macs)


def choose_precision(bench: Benchmarks, fp32: FileBench, quantized: FileBench | None, rejected: str | None,
                     max_size_mb: float | None = None) -> tuple[FileBench, str]:
    """Ship the quantized file (the profile's preset, accepted within the accuracy limit, smaller) unless FP32
    measured faster beyond the noise, judged on their round-by-round latency ratio, and fits ``max_size_mb``."""
    if quantized is None:
        return fp32, rejected or "no quantized model was asked for (export.quantize: none)"
    q = quantized.precision.upper()
    speed = bench.ratio(fp32, quantized)
    if speed.low > 1 and max_size_mb is not None and fp32.size_mb > max_size_mb >= quantized.size_mb:
        return quantized, (f"{speed.text('FP32', q)}, but FP32 ({fp32.size_mb:.1f} MB) is over budget.max_size_mb "
                           f"{max_size_mb:g}: shipping {q}")
    if speed.low > 1:
        return fp32, f"{speed.text('FP32', q)}: shipping FP32"
    return quantized, f"{speed.text('FP32', q)}, within the accuracy limit: shipping {q}"


def budget_checks(budget: BudgetConfig, model: Deployed, accuracy: float) -> list[dict]:
    """Every limit of ``budget`` checked on ``model`` at its shipped precision, with ``accuracy`` (validation
    accuracy when choosing, test accuracy when reporting) for the floor. A latency is met, not met, or
    inconclusive when its band straddles the limit."""
    b, ships = budget, model.ships
    checks = []

    def check(name: str, limit, value, ok: bool, unit: str = "", told=None, **band) -> None:
        verdict = told or ("met" if ok else "not met")
        checks.append({"name": name, "limit": limit, "value": value, "unit": unit, "verdict": verdict,
                       "met": verdict == "met", **band})

    if b.latency_ms is not None:
        lat = ships.latency
        check("latency_ms (p50, batch 1)", b.latency_ms, lat.p50, False, "ms", lat.verdict(b.latency_ms),
              low=lat.low, high=lat.high)
    if b.max_size_mb is not None:
        check("max_size_mb", b.max_size_mb, ships.size_mb, ships.size_mb <= b.max_size_mb, "MB")
    params = model.trained.result.params
    if b.max_params is not None:
        check("max_params", b.max_params, params, params <= b.max_params)
    if b.max_macs is not None:
        check("max_macs", b.max_macs, model.macs, model.macs <= b.max_macs)
    if b.min_accuracy is not None:
        check("min_accuracy", b.min_accuracy, accuracy, accuracy >= b.min_accuracy)
    return checks


@dataclass
class ShipOption:
    name: str
    precision: str
    val_accuracy: float
    misses: list[str]
    """The budget checks it does not meet (an inconclusive latency is not a miss, as for the gate)."""


@dataclass
class Shipped:
    model: Deployed
    rule: str
    """'best' or 'distilled' (the recipe's ``ship``)."""
    why: str
    runner_up: str | None
    margin: Interval | None
    """Shipped minus runner-up validation accuracy, paired on the same images."""
    options: list[ShipOption]


def choose_shipped(models: list[Deployed], budget: BudgetConfig, rule: str) -> Shipped:
    """The model to ship (module doc). Without any model meeting every check, the best on validation ships
    (and the gate fails)."""
    accuracy = {m.name: float(m.val_correct().mean()) for m in models}
    options = [ShipOption(m.name, m.ships.precision, accuracy[m.name],
                          [c["name"] for c in budget_checks(budget, m, accuracy[m.name]) if c["verdict"] == "not met"])
               for m in models]
    by_name = {m.name: m for m in models}
    eligible = [o for o in options if not o.misses] or options
    ranked = sorted(eligible, key=lambda o: (-o.val_accuracy, by_name[o.name].ships.latency.p50))
    chosen = by_name["distilled"] if rule == "distilled" else by_name[ranked[0].name]
    others = [o for o in ranked if o.name != chosen.name]
    runner_up = by_name[others[0].name] if others else None
    margin = accuracy_drop(chosen.val_correct(), runner_up.val_correct()) if runner_up else None
    return Shipped(chosen, rule, ship_reason(chosen, runner_up, margin, rule, options), others[0].name if others
                   else None, margin, options)


def ship_reason(chosen: Deployed, runner_up: Deployed | None, margin: Interval | None, rule: str,
                options: list[ShipOption]) -> str:
    """One sentence: what shipped, by which rule, and by how much over the runner-up."""
    own = next(o for o in options if o.name == chosen.name)
    head = (f"{chosen.name} ({chosen.ships.precision}) ships: "
            + ("ship: distilled in the recipe" if rule == "distilled" else
               "the best validation accuracy among the models meeting every budget check" if not own.misses else
               "no model meets every budget check, so the best on validation"))
    head += f", {own.val_accuracy * 100:.1f}% on validation"
    if runner_up is None or margin is None:
        return head + "; no other model to compare"
    return head + f"; {runner_up.name} ({runner_up.ships.precision}) next: {margin.points()}"
