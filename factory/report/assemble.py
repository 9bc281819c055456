"""A build's :class:`~factory.report.outcome.BuildOutcome` as its :class:`~factory.report.schema.Report`: pure
functions of the outcome, the published file names and the :class:`Provenance` (where and when it was made)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from factory import __version__
from factory.report.augmentation import augmentation_of
from factory.budget import LIMITS, Measures, check_budget
from factory.licenses import input_licenses, warning_line
from factory.report.budget import Budget, BudgetLimits
from factory.report.compute import compute_notes, compute_of
from factory.fields import Band
from factory.report.quantization import export_summary
from factory.report.schema import (
    BatchLatency,
    Comparison,
    DataSummary,
    Latency,
    LatencySetup,
    Licensing,
    Margin,
    Ratio,
    Report,
    ResultRow,
    ShipDecision,
    StudentSummary,
    TeacherSummary,
)
from factory.report.selection import Search, Selection, selection_of

if TYPE_CHECKING:
    from factory.latency import Latency as MeasuredLatency
    from factory.report.outcome import BuildOutcome
    from factory.stages.bench import FileBench
    from factory.decide.ship import Deployed

CHANGES_NO_RESULT = True

REPORTED_LIBRARIES = ("torch", "torchvision", "timm", "onnx", "onnxruntime", "numpy", "pillow", "diffusers",
                      "transformers", "datasets", "pydantic")


@dataclass(frozen=True)
class Provenance:
    """When and where a report was made: the time, the host, the libraries and the factory's git revision."""

    created: str
    host: dict
    libraries: dict[str, str]
    git: dict | None

    @classmethod
    def of_this_process(cls) -> Provenance:
        """Now, this host, the installed libraries and this checkout's revision."""
        from factory.identity import library_versions
        from factory.host import host_info

        return cls(datetime.now(timezone.utc).isoformat(timespec="seconds"), host_info(),
                   library_versions(REPORTED_LIBRARIES), git_revision())


def git_revision() -> dict | None:
    """The factory checkout's commit and whether it had uncommitted changes (None outside a git checkout)."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(dirty)}


def _latency(lat: MeasuredLatency) -> Latency:
    return Latency(p50=lat.p50, low=lat.low, high=lat.high, p90=lat.p90, p99=lat.p99, mean=lat.mean, std=lat.std,
                   rounds_p50=lat.rounds_p50, runs=lat.runs)


def _result_row(outcome: BuildOutcome, model: Deployed, bench: FileBench, published: dict[str, str]) -> ResultRow:
    refit = model is outcome.shipped.refit  # benchmarked on its own after the decision, so compared with itself
    speed = outcome.bench.result.ratio(model.ships if refit else outcome.shipped.model.ships, bench)
    eager = bench.eager
    return ResultRow(
        name=model.name if bench.precision == "fp32" else f"{model.name}-{bench.precision}", method=model.name,
        role=model.role, precision=bench.precision, ships=bench is model.ships,
        file=published.get(bench.file) if model is outcome.shipped.published else None,
        val_accuracy=None if refit else float(model.val_correct(bench.file).mean()), accuracy=bench.accuracy,
        test_images=bench.test_images, latency_ms=_latency(bench.latency),
        latency_ms_batch=BatchLatency(batch_size=bench.latency_batch.batch_size, p50=bench.latency_batch.p50),
        vs_student=Ratio(median=speed.median, low=speed.low, high=speed.high), size_mb=bench.size_mb,
        params=model.trained.result.params, threads=bench.latency.threads, provider=bench.latency.provider,
        peak_memory_mb=bench.peak_memory_mb,
        eager_latency_ms=Band(p50=eager.p50, low=eager.low, high=eager.high) if eager else None,
        end_to_end_ms=_band(bench.end_to_end))


def _band(latency: MeasuredLatency | None) -> Band | None:
    return Band(p50=latency.p50, low=latency.low, high=latency.high) if latency else None


def result_rows(outcome: BuildOutcome, published: dict[str, str]) -> list[ResultRow]:
    """One row per model and precision measured (the refit last, when there is one; it has no validation
    accuracy: it trained on those images); ``published``: the shipped model's files, source -> name."""
    models = [*outcome.models, *([outcome.shipped.refit] if outcome.shipped.refit else [])]
    return [_result_row(outcome, m, b, published) for m in models for b in (m.fp32, m.quantized) if b is not None]


def budget_of(outcome: BuildOutcome, shipped: ResultRow, host: dict) -> Budget:
    """Each budget limit checked on the shipped model (accuracy on test: measured, not decided)."""
    checks = check_budget(outcome.recipe.budget, Measures.of(outcome.shipped.published, shipped.accuracy))
    failed = [c.name for c in checks if c.verdict == "not met"]
    inconclusive = [c.name for c in checks if c.verdict == "inconclusive"]
    b = outcome.recipe.budget
    limits = BudgetLimits(**{limit.field: getattr(b, limit.field) for limit in LIMITS})
    profile = b.device()
    stands_in, why = profile.stand_in(host)
    return Budget(verdict="not met" if failed else "inconclusive" if inconclusive else "met",
                  met=not failed and not inconclusive, failed=failed, inconclusive=inconclusive, model=shipped.name,
                  profile=profile.name, profile_description=profile.description, measured_on=host["machine"],
                  host_matches_profile=stands_in, stand_in=why, checks=checks, limits=limits)


def ship_decision(outcome: BuildOutcome, row: ResultRow) -> ShipDecision:
    """Which model ships and why: the rule, its margin over the runner-up on validation, every option."""
    s, m = outcome.shipped, outcome.shipped.margin
    return ShipDecision(
        name=row.name, method=s.model.name, file=row.file, rule=s.rule, decision=s.why, why=s.model.why,
        runner_up=s.runner_up, tie=s.decision.tie, tied=list(s.decision.tied), refit=s.refit is not None,
        options=s.options,
        margin=None if m is None else Margin(value=m.value, low=m.low, high=m.high, confidence=m.confidence,
                                             images=m.n))


def comparison(outcome: BuildOutcome) -> Comparison:
    """How the methods were made comparable, checked from what each training run recorded."""
    students = [m for m in outcome.models if m.role in ("student", "baseline")]
    digests = {m.name: m.trained.result.views_seen for m in students}
    same_views = len(set(digests.values())) == 1
    d, a = outcome.recipe.distill, outcome.recipe.augment
    views = f"{d.teacher_views} seeded views per image, one chosen per epoch" if d.teacher_views else \
        "a fresh seeded view per epoch"
    listed = ", ".join(f"{k} {v}" for k, v in digests.items())
    real_only = a.enabled and not a.for_baselines and len(students) > 1
    if same_views:
        how = (f"the same images and views in the same order ({views}, {d.epochs} epochs; data digest "
               f"{next(iter(digests.values()))}), differing only in loss and initialisation")
    elif real_only:
        how = (f"the same seeded views of the real images ({views}, {d.epochs} epochs), the distilled student also on "
               f"{len(outcome.data.synthetic)} synthetic images (augment.for_baselines: false; data digests {listed})")
    else:
        how = f"DIFFERENT data ({listed})"
    precisions = ", ".join(f"{m.name} {m.ships.precision}" for m in outcome.models)
    line = (f"Comparison: {' and '.join(digests)} trained on {how}; every model was exported and quantized the same "
            f"way and is compared at the precision it would ship ({precisions}).")
    return Comparison(same_views=same_views, baselines_real_only=real_only, views_seen=digests, line=line)


def selection_with_search(outcome: BuildOutcome) -> Selection | None:
    """The measured candidates and, when the build searched, each contender's scores per rung."""
    if outcome.selection is None:
        return None
    s = outcome.search
    selection = selection_of(outcome.selection, s.winner if s else None)
    if s is not None:
        selection.search = Search(
            winner=s.winner, rule=s.rule, rung_epochs=s.rung_epochs, eta=s.eta, finalists=s.finalists,
            wall_s=s.wall_s, flops=s.flops, epochs_spent=s.epochs_spent, regime_prior=s.regime_source,
            winner_distill_wall_s=outcome.distill.wall_s,
            contenders=s.contenders)
    return selection


def report_notes(outcome: BuildOutcome, shipped: ResultRow, compute: list[str]) -> list[str]:
    """The build's notes, then a rejected quantization, a stand-in execution provider and the compute notes."""
    notes = list(outcome.notes)
    quant = outcome.shipped.model.export.result.quantization
    if quant is not None and not quant.accepted:
        notes.append(f"{quant.label} rejected: {quant.reason}")
    profile = outcome.recipe.budget.device()
    if shipped.provider != profile.execution_provider:
        notes.append(f"latency measured with {shipped.provider}: this onnxruntime build has no "
                     f"{profile.execution_provider} for the {profile.name} profile (install onnxruntime-gpu on the device)")
    return notes + compute


def data_summary(outcome: BuildOutcome) -> DataSummary:
    """The task's classes, split sizes, skipped images and the split every decision was made on."""
    data = outcome.data
    return DataSummary(source=data.source, root=str(data.root), classes=data.classes, train=len(data.train),
                       skipped=[list(item) for item in data.skipped], val=len(data.val), test=len(data.test),
                       synthetic=len(data.synthetic), decisions_on=data.check_split()[0])


def latency_setup(outcome: BuildOutcome) -> LatencySetup:
    """How latency was measured: rounds, noise band, session options and the host's load."""
    bench = outcome.bench.result
    return LatencySetup(rounds=len(outcome.shipped.model.ships.latency.rounds_p50), noise_band=bench.noise_band,
                        session_options=bench.session_options, load=bench.load,
                        warning=bench.warning())


def assemble_report(outcome: BuildOutcome, published: dict[str, str], made: Provenance) -> Report:
    """The report of ``outcome``; ``published``: the shipped model's files, source -> published name."""
    r, student, teacher = outcome.recipe, outcome.select.result, outcome.teacher.result
    rows = result_rows(outcome, published)
    shipped = next(row for row in rows if row.method == outcome.shipped.published.name and row.ships)
    compute = compute_of(outcome)
    licensing = licensing_of(outcome)
    warning = warning_line(licensing.inputs)
    return Report(
        name=r.name, recipe_hash=r.fingerprint(), factory_version=__version__, created=made.created,
        device=outcome.device, host=made.host, libraries=made.libraries, git=made.git, data=data_summary(outcome),
        augmentation=augmentation_of(outcome), results=rows, shipped=ship_decision(outcome, shipped),
        budget=budget_of(outcome, shipped, made.host), latency=latency_setup(outcome),
        comparison=comparison(outcome), compute=compute,
        student=StudentSummary(model=student.model, params=student.params, macs=student.macs,
                               image_size=student.image_size,
                               chosen_by="search on the task (student.model: auto)" if outcome.search else "the recipe"),
        selection=selection_with_search(outcome),
        teacher=TeacherSummary(model=teacher.model, weights=teacher.weights, adapt=teacher.adapt,
                               test_accuracy=teacher.test_accuracy, params=teacher.params),
        export=export_summary(outcome), training_curves={m.name: m.trained.result.history for m in outcome.models},
        notes=report_notes(outcome, shipped, compute_notes(compute.methods)) + ([warning] if warning else []),
        recipe=r.model_dump(mode="json"), licensing=licensing)


def licensing_of(outcome: BuildOutcome) -> Licensing:
    """The licence of every input of the build and whether it reaches the shipped model (:mod:`factory.licenses`)."""
    from factory.models import checkpoint_for

    r = outcome.recipe
    started_pretrained = outcome.finetune is not None or outcome.distill_pretrained is not None
    baseline = checkpoint_for(r.baseline.weights, r.student.model) if started_pretrained else None
    synthetic = len(outcome.data.synthetic)
    data = r.data.dataset or str(r.data.root or "")
    inputs = input_licenses(r, outcome.shipped.model.name, synthetic, baseline, f"{r.data.source} {data}".strip())
    return Licensing(policy=r.noncommercial, model_license=r.license, inputs=inputs)
