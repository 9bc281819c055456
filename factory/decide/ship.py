"""Which file ships: each trained model at the precision it would ship (:func:`choose_precision`), checked
against every budget limit, and the best of them on the validation split by the rule of
:func:`factory.decide.noise.choose` (``ship: best``), or always the distilled student (``ship: distilled``). The
decision and how sure it was (the paired interval over the runner-up, and a tie when the split cannot tell
them apart) are what the report opens with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from factory.budget import Measures, check_budget, not_met
from factory.stage import Done
from factory.stages.bench import Benchmarks, FileBench
from factory.stages.export import Exported
from factory.decide.types import ShipOption
from factory.decide.noise import Candidate, Decision, accuracy_margin, choose
from factory.stats import Interval
from factory.train import TrainedModel

if TYPE_CHECKING:
    from factory.budget import BudgetConfig

CHANGES_NO_RESULT = True


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

    def val_nll(self, file: str | None = None) -> np.ndarray:
        """Per validation image, the negative log-likelihood of its label under ``file`` (default: the shipped
        precision's)."""
        return np.asarray(self.export.result.val_nll[file or self.ships.file], float)


def deployed(name: str, role: str, trained: Done[TrainedModel], export: Done[Exported], bench: Benchmarks,
             macs: int, max_size_mb: float | None = None) -> Deployed:
    """One model's files as benchmarked, and the precision it would ship at (:func:`choose_precision`)."""
    fp32 = bench.of(name, "model.onnx")
    quant = export.result.quantization
    quantized = bench.of(name, quant.file) if quant is not None and quant.file is not None else None
    ships, why = choose_precision(bench, fp32, quantized, quant.reason if quant else None, max_size_mb)
    return Deployed(name, role, trained, export, fp32, quantized, ships, why, macs)


def refit_deployed(name: str, chosen: Deployed, trained: Done[TrainedModel], export: Done[Exported],
                   bench: Benchmarks) -> Deployed:
    """The refit of ``chosen`` as benchmarked, shipping at ``chosen``'s precision (decided before the refit)."""
    quant = export.result.quantization
    quantized = bench.of(name, quant.file) if quant is not None and quant.file is not None else None
    return Deployed(name, chosen.role, trained, export, bench.of(name, "model.onnx"), quantized,
                    bench.of(name, chosen.ships.file), f"{chosen.why} (decided before the refit)", chosen.macs)


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


@dataclass
class Shipped:
    model: Deployed
    rule: str
    """'best' or 'distilled' (the recipe's ``ship``)."""
    why: str
    decision: Decision
    """How the validation split decided (:func:`factory.decide.noise.choose`) and how sure it was."""
    options: list[ShipOption]
    refit: Deployed | None = None
    """The chosen method refit on train + validation (:mod:`factory.stages.refit`): the files published."""
    refit_runs: list[tuple[str, Done]] = field(default_factory=list)
    """(label, output) of the refit's training stages, in order (its teacher cache, then its training)."""

    @property
    def published(self) -> Deployed:
        """The model whose files are published: the refit when there is one, else the chosen model."""
        return self.refit or self.model

    @property
    def runner_up(self) -> str | None:
        return self.decision.runner_up

    @property
    def margin(self) -> Interval | None:
        """Shipped minus runner-up validation accuracy, paired on the same images."""
        return self.decision.margin


def candidate(model: Deployed) -> Candidate:
    """``model`` at its shipped precision as :func:`factory.decide.noise.choose` reads it."""
    return Candidate(model.name, model.val_correct(), model.val_nll(), model.ships.latency.p50)


def choose_shipped(models: list[Deployed], budget: BudgetConfig, rule: str) -> Shipped:
    """The model to ship (module doc): :func:`factory.decide.noise.choose` among the models meeting every budget check
    (without any, among all of them: the gate then fails), or the distilled student against the best other."""
    accuracy = {m.name: float(m.val_correct().mean()) for m in models}
    options = [ShipOption(m.name, m.ships.precision, accuracy[m.name],
                          [c.name for c in not_met(check_budget(budget, Measures.of(m, accuracy[m.name])))])
               for m in models]
    misses = {o.name: o.misses for o in options}
    eligible = [m for m in models if not misses[m.name]] or models
    if rule == "distilled":
        chosen = next(m for m in models if m.name == "distilled")
        best_other = choose([candidate(m) for m in eligible if m is not chosen]) if len(eligible) > 1 else None
        runner_up = best_other and next(m for m in models if m.name == best_other.chosen)
        decision = Decision(chosen.name, runner_up and runner_up.name,
                            runner_up and accuracy_margin(chosen.val_correct(), runner_up.val_correct()))
    else:
        decision = choose([candidate(m) for m in eligible])
        chosen = next(m for m in models if m.name == decision.chosen)
    return Shipped(chosen, rule, ship_reason(chosen, decision, rule, options), decision, options)


def ship_reason(chosen: Deployed, decision: Decision, rule: str, options: list[ShipOption]) -> str:
    """One sentence: what shipped, by which rule, and how sure the validation split was."""
    own = next(o for o in options if o.name == chosen.name)
    head = (f"{chosen.name} ({chosen.ships.precision}) ships: "
            + ("ship: distilled in the recipe" if rule == "distilled" else
               "chosen on validation among the models meeting every budget check" if not own.misses else
               "no model meets every budget check, so chosen on validation among all"))
    head += f", {own.val_accuracy * 100:.1f}% on validation"
    if decision.runner_up is None or decision.margin is None:
        return head + "; no other model to compare"
    if rule == "distilled":
        return head + f"; {decision.runner_up}, the best other: {decision.margin.points()}"
    return head + "; " + decision.how_sure()
