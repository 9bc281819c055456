"""What the build cost: every stage run (from the cache or not) and the training compute of each method, with
the documented pre-training behind its starting weights."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from factory.fields import Strict
from factory.methods import METHODS

if TYPE_CHECKING:
    from factory.report.outcome import BuildOutcome

CHANGES_NO_RESULT = True

Cost = tuple[float | None, float | None]
"""(FLOPs, wall s); None where unknown."""


class Spent(Protocol):
    """What a part of a method's compute cost: a stage output (:class:`~factory.stage.Done`) or a run inside
    one (a quantization-aware fine-tune)."""

    wall_s: float
    flops: float


Parts = list[tuple[str, Spent | None]]
"""(what it is, in words; what it cost, or None when it did not run)."""


class StageCost(Strict):
    stage: str
    kind: str
    key: str
    wall_s: float
    flops: float
    cached: bool


class MethodCost(Strict):
    """A method's training compute; ``flops`` includes its documented pre-training, ``build_*`` only this build."""

    wall_s: float
    flops: float
    includes: str
    build_flops: float
    build_wall_s: float
    pretrain_flops: float | None
    pretrain_wall_s: float | None


class Compute(Strict):
    stages: list[StageCost]
    methods: dict[str, MethodCost]


def documented_pretraining(weights: str | None, stated_flops: float | None) -> Cost:
    """(FLOPs, wall s) of the pre-training behind ``weights``: ``stated_flops`` (the recipe's
    ``*.pretrain_flops``) or the ``pretrain_report.json`` of a factory checkpoint folder; zero without
    weights; FLOPs None when weights are named but their cost is unknown."""
    if weights is None:
        return 0.0, 0.0
    report_file = Path(weights) / "pretrain_report.json"
    if stated_flops is None and report_file.is_file():
        documented = json.loads(report_file.read_text())
        return documented.get("flops"), documented.get("wall_s")
    return stated_flops, None


def _add(a: Cost, b: Cost) -> Cost:
    return tuple(None if x is None or y is None else x + y for x, y in zip(a, b))


def _method(parts: Parts, pretraining: Cost, whose: str, field: str) -> MethodCost:
    """The compute of the stages in ``parts`` plus the pre-training of ``whose`` weights (``field``: the recipe
    field that states an unknown pre-training cost)."""
    ran = [(words, done) for words, done in parts if done is not None]
    wall_s, flops = sum(d.wall_s for _, d in ran), sum(d.flops for _, d in ran)
    includes = " + ".join(dict.fromkeys(words for words, _ in ran))
    pretrain_flops, pretrain_wall_s = pretraining
    if pretrain_flops:
        includes += f" + the {whose}'s pre-training"
    elif pretrain_flops is None:
        includes += f" (the {whose}'s pre-training cost is unknown: set {field})"
    return MethodCost(wall_s=wall_s, flops=flops + (pretrain_flops or 0.0), includes=includes, build_flops=flops,
                      build_wall_s=wall_s, pretrain_flops=pretrain_flops, pretrain_wall_s=pretrain_wall_s)


def _teacher_side(outcome: BuildOutcome) -> Parts:
    return [("augmentation", outcome.augment), ("teacher filter", outcome.augment_filter),
            ("teacher adaptation", outcome.teacher), ("teacher cache", outcome.teacher_cache)]


def _synthetic_for_baselines(outcome: BuildOutcome) -> Parts:
    """Baselines given the synthetic images pay for making them (and for the teacher that filtered them)."""
    a = outcome.recipe.augment
    if not (a.enabled and a.for_baselines):
        return []
    return [("augmentation", outcome.augment), ("teacher filter", outcome.augment_filter),
            ("teacher adaptation", outcome.teacher if outcome.augment_filter is not None else None)]


def _quantization_aware(outcome: BuildOutcome, name: str) -> Parts:
    """The quantization-aware fine-tune of model ``name``'s export, when that remedy ran."""
    quant = [m.export.result.quantization for m in outcome.models if m.name == name]
    return [("quantization-aware fine-tuning", q.qat) for q in quant if q is not None and q.qat is not None]


def method_compute(outcome: BuildOutcome) -> dict[str, MethodCost]:
    """Training compute per method (:data:`factory.methods.METHODS`), each including the documented pre-training
    behind its starting weights."""
    r = outcome.recipe
    pretraining = {"teacher": documented_pretraining(r.teacher.weights, r.teacher.pretrain_flops),
                   "student": documented_pretraining(r.baseline.weights, r.baseline.pretrain_flops)}
    stated_in = {"teacher": "teacher.pretrain_flops", "student": "baseline.pretrain_flops"}
    search = [("distillation", run.done) for run in (outcome.search.runs if outcome.search else [])]
    methods = {}
    for m in METHODS:
        if (trained := getattr(outcome, m.attr)) is None:
            continue
        upstream = [] if m.role == "teacher" else \
            _teacher_side(outcome) if m.distils else _synthetic_for_baselines(outcome)
        own_search = search if m.role == "student" else []
        parts = [*upstream, *own_search, (m.training, trained), *_quantization_aware(outcome, m.name)]
        cost = functools.reduce(_add, (pretraining[w] for w in m.pretrained), (0.0, 0.0))
        methods[m.name] = _method(parts, cost, "'s and the ".join(m.pretrained),
                                  " and ".join(stated_in[w] for w in m.pretrained))
        if own_search:
            methods[m.name].includes += f" (with the student search's {len(search)} distillations)"
    if (refit := outcome.shipped.refit) is not None:  # on top of its method's own cost, after the decision
        training = [(label, done) for label, done in outcome.shipped.refit_runs if label.startswith("refit: ")]
        methods[refit.name] = _method(training, (0.0, 0.0), "", "")
    return methods


def compute_notes(methods: dict[str, MethodCost]) -> list[str]:
    """The distilled student's compute against the pretrain-then-finetune baseline's, with and without
    pre-training (nothing when either is missing)."""
    distilled, baseline = methods.get("distilled"), methods.get("pretrained-finetuned")
    if not (distilled and baseline and distilled.flops):
        return []
    notes = []
    if distilled.pretrain_flops is not None and baseline.pretrain_flops is not None:
        notes.append(f"compute with pre-training included: distilled {distilled.flops:.3g} FLOPs, pretrain-then-"
                     f"finetune baseline {baseline.flops:.3g} (baseline / distilled = {baseline.flops / distilled.flops:.3g})")
    ratio = baseline.build_flops / distilled.build_flops
    notes.append(f"compute in this build only (pre-trained weights taken as given): distilled "
                 f"{distilled.build_flops:.3g} FLOPs, baseline {baseline.build_flops:.3g} (baseline / distilled = {ratio:.3g})")
    return notes


def compute_of(outcome: BuildOutcome) -> Compute:
    """Every stage run, in order, and each method's compute."""
    stages = [StageCost(stage=label, kind=done.stage, key=done.key, wall_s=done.wall_s, flops=done.flops,
                        cached=done.cached) for label, done in outcome.stage_runs]
    return Compute(stages=stages, methods=method_compute(outcome))


def flops_text(flops: float | None) -> str:
    """FLOPs in TFLOP or GFLOP ('n/a' for none)."""
    return "n/a" if not flops else f"{flops / 1e12:.2f} TFLOP" if flops >= 1e11 else f"{flops / 1e9:.2f} GFLOP"
