"""``build()``: the factory's stages in order, each cached under the hash of what it reads.

The build reads top to bottom in numbered phases (:func:`_build`): the plans that read no student are made
before any work (:class:`TaskPlans`), the student is resolved once (listed, searched or named, with its
checkpoint: :func:`resolve_student`), then its plans (:class:`BuildPlans`); each stage gets its plan and the typed
results of the stages before it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from factory import distributed as dist
from factory.budget import BudgetConfig, Measures, check_budget, not_met
from factory.cache import DEFAULT_CACHE, StageCache
from factory.files import check_output_folders, full_disk_reported
from factory.stage import BuildLog, Done
from factory.console import log
from factory.context import Runtime
from factory.errors import HubUnreachableError
from factory.methods import METHODS, method
from factory.recipe import Recipe
from factory.sources import load_task_data
from factory.report.outcome import BuildOutcome
from factory.report.publish import BuildResult, publish
from factory.stages.apps import AppFiles, AppsPlan, app_forms, provenance
from factory.stages.augment import MANIFEST, AugmentPlan, SyntheticImages, read_manifest, synthesize, synthetic_samples
from factory.stages.augment_filter import FilteredImages, FilterPlan, filter_synthetic
from factory.stages.baselines import BaselinePlan, BaselineStudent, try_baseline
from factory.stages.bench import Benchmarks, BenchPlan, benchmark
from factory.stages.distill import DistilledStudent, DistillPlan, distill_student
from factory.stages.export import Exported, ExportPlan, export_model
from factory.quant.qat import int8_conv_exact
from factory.quant.qat_distill import QatSource
from factory.decide.search import SearchResult, search_student, student_recipe
from factory.decide.listing import NoStudentFits, StudentListing, check_student_fits, list_students, no_fit_message
from factory.stages.select import SelectPlan, select_student
from factory.stages.refit import RefitExportPlan, export_refit, refit_trained, used_attempt
from factory.decide.ship import Shipped, choose_shipped, deployed, refit_deployed
from factory.stages.teacher import (
    AdaptedTeacher,
    TeacherCache,
    TeacherCachePlan,
    TeacherPlan,
    adapt_teacher,
    cache_teacher_outputs,
)
from factory.task import TaskData

CHANGES_NO_RESULT = True


@dataclass(frozen=True)
class TaskPlans:
    """The plans that read no student, built before it is known: the teacher side's, the export's (the candidates
    are exported as the student will be) and the benchmark's (None: the stage does not run)."""

    augment: AugmentPlan | None
    augment_filter: FilterPlan | None
    teacher: TeacherPlan
    teacher_cache: TeacherCachePlan | None
    export: ExportPlan
    bench: BenchPlan
    search: DistillPlan | None
    """The distillation every search run starts from, its student set per run (None: the student is named)."""
    apps: AppsPlan | None
    """The shipped model's forms for apps (None: ``export.formats`` asks for the ONNX file alone)."""

    @classmethod
    def from_recipe(cls, recipe: Recipe, data: TaskData, int8_exact_here: bool) -> TaskPlans:
        """``int8_exact_here``: this host's INT8 probe (:func:`factory.quant.qat.int8_conv_exact`), resolved once by
        the caller."""
        n, bench = data.num_classes, BenchPlan.from_recipe(recipe)
        return cls(AugmentPlan.from_recipe(recipe, data), FilterPlan.from_recipe(recipe),
                   TeacherPlan.from_recipe(recipe, n), TeacherCachePlan.from_recipe(recipe),
                   ExportPlan.from_recipe(recipe, int8_exact_here), bench,
                   DistillPlan.from_recipe(recipe, n) if recipe.student.model == "auto" else None,
                   AppsPlan.from_recipe(recipe, bench))


@dataclass(frozen=True)
class BuildPlans(TaskPlans):
    """Every stage's plan: the task's, then the resolved student's (None: the stage does not run)."""

    select: SelectPlan
    distill: DistillPlan
    distill_pretrained: DistillPlan | None
    scratch: BaselinePlan | None
    finetune: BaselinePlan | None

    def of_method(self, name: str) -> TeacherPlan | BaselinePlan | DistillPlan:
        """The training plan of the model ``name`` ('distilled', 'scratch', ..., 'teacher')."""
        return getattr(self, method(name).attr)

    @classmethod
    def for_student(cls, task: TaskPlans, recipe: Recipe, num_classes: int) -> BuildPlans:
        """``task``'s plans and the student's, read from ``recipe`` with its student resolved."""
        return cls(**{f.name: getattr(task, f.name) for f in dataclasses.fields(TaskPlans)},
                   select=SelectPlan.from_recipe(recipe, num_classes),
                   distill=DistillPlan.from_recipe(recipe, num_classes),
                   distill_pretrained=DistillPlan.pretrained_from_recipe(recipe, num_classes),
                   scratch=BaselinePlan.from_recipe(recipe, "scratch", num_classes),
                   finetune=BaselinePlan.from_recipe(recipe, "finetune", num_classes))

    @classmethod
    def from_recipe(cls, recipe: Recipe, data: TaskData, int8_exact_here: bool) -> BuildPlans:
        """Every plan of ``recipe``, whose student is named."""
        return cls.for_student(TaskPlans.from_recipe(recipe, data, int8_exact_here), recipe, data.num_classes)


def build(recipe: Recipe, device: str = "auto", force: bool = False, cache_dir: Path | None = None,
          out_dir: Path | None = None) -> BuildResult:
    """Run every stage of ``recipe`` and write ``exports/<name>/``; unchanged stages come from the cache."""
    cache_dir = Path(cache_dir or DEFAULT_CACHE)
    out_dir = Path(out_dir or Path("exports") / recipe.name)
    with full_disk_reported(check_output_folders(out_dir, "report.json", cache_dir)):
        return _build(recipe, device, force, cache_dir, out_dir)


def _build(asked: Recipe, device: str, force: bool, cache_dir: Path, out_dir: Path) -> BuildResult:
    # 1. the task's data, checked before any work, and the plans that read no student
    rt = Runtime(load_task_data(asked.data, cache_dir), StageCache(cache_dir, force),
                 dist.training_device(dist.resolve_device(device)), asked.data.num_workers)
    log(f"[bold]factory build[/] {asked.name}: {rt.data.num_classes} classes, {len(rt.data.train)} train / "
        f"{len(rt.data.val)} val / {len(rt.data.test)} test images from {rt.data.source}, device {rt.device}")
    rt.data.check_split()  # every decision needs a validation split: fail before any work
    build_log = BuildLog()
    for warning in rt.data.small_classes():
        build_log.warn(warning)
    task_plans = TaskPlans.from_recipe(asked, rt.data, int8_conv_exact())  # the host probe, once: plans run none
    # 2. the candidate students, measured before any training (none fitting fails here)
    listing = choose_student(rt, asked, task_plans) if asked.student.model == "auto" else None
    # 3. the teacher side: synthetic images, the adapted teacher, its filter and its cache
    teacher_side = prepare_teacher(rt, task_plans, asked, build_log)
    rt = teacher_side.runtime
    # 4. the student resolved once (searched among the candidates, or named) with its checkpoint; its plans
    recipe, search = resolve_student(rt, asked, listing, task_plans, teacher_side, build_log)
    plans = BuildPlans.for_student(task_plans, recipe, rt.data.num_classes)
    student = build_log.stage(f"select: {recipe.student.model}", select_student(rt, plans.select))
    check_student_fits(student.result, recipe.budget)
    # 5. every method trained, exported and benchmarked together (the teacher sized by its own stage)
    trained = train_models(rt, plans, teacher_side, build_log)
    exports, bench = export_and_bench(rt, plans, trained.in_order(teacher_side.teacher), build_log,
                                      trained.qat_sources(teacher_side))
    models = [deployed(name, role, model, export, bench.result,
                       model.result.macs if role == "teacher" else student.result.macs, recipe.budget.max_size_mb)
              for name, role, model, export in exports]
    # 6. what ships, then its refit on train + validation
    shipped = choose_shipped(models, recipe.budget, recipe.ship)
    if recipe.refit:
        shipped = refit_shipped(rt, plans, teacher_side, shipped, recipe.budget, build_log)
    log(f"  shipped: {shipped.why}")
    # 7. the shipped model's forms for apps (every process: a stage), then the export folder: its files, the report
    apps = app_forms_of(rt, plans.apps, recipe, teacher_side.teacher, shipped, build_log)
    if not dist.is_main():
        return BuildResult(out_dir, None)
    outcome = BuildOutcome(
        recipe=recipe, data=rt.data, device=str(rt.device), select=student, teacher=teacher_side.teacher,
        distill=trained.distill, bench=bench, models=models, shipped=shipped,
        augment=teacher_side.augment, augment_filter=teacher_side.augment_filter,
        teacher_cache=teacher_side.teacher_cache, selection=listing, search=search,
        distill_pretrained=trained.distill_pretrained, scratch=trained.scratch, finetune=trained.finetune, apps=apps,
        stage_runs=build_log.runs, notes=build_log.notes)
    return BuildResult(out_dir, publish(outcome, out_dir), outcome)


def app_forms_of(rt: Runtime, plan: AppsPlan | None, recipe: Recipe, teacher: Done, shipped: Shipped,
                 build_log: BuildLog) -> Done[AppFiles] | None:
    """The published model's forms for apps (:mod:`factory.stages.apps`), stamped as published; a refit's are
    not judged on the validation images it trained on. Their notes go to ``build_log``."""
    if plan is None:
        return None
    model = shipped.published
    apps = build_log.stage("apps: the shipped model's forms", app_forms(
        rt, plan, model.export, model.ships.file, provenance(recipe, teacher, model.name), shipped.refit is None))
    build_log.notes.extend(apps.result.notes)
    return apps


def resolve_student(rt: Runtime, asked: Recipe, listing: StudentListing | None, plans: TaskPlans,
                    teacher_side: TeacherSide, build_log: BuildLog) -> tuple[Recipe, SearchResult | None]:
    """``asked`` with its student resolved once: searched among ``listing``'s candidates (distilled from the
    teacher as ``plans.search`` says), or the named one, with its checkpoint (:func:`student_recipe`)."""
    if listing is None:
        return student_recipe(asked, asked.student.model, False, build_log.notes), None
    search = search_student(rt, asked, listing.rows, plans.search, teacher_side.teacher, teacher_side.teacher_cache,
                            build_log.stage)
    return student_recipe(asked, search.winner, True, build_log.notes), search


def export_and_bench(rt: Runtime, plans: BuildPlans, trained: list[tuple[str, str, Done]], build_log: BuildLog,
                     qat_sources: dict[str, QatSource]) -> tuple[list[tuple[str, str, Done, Done[Exported]]],
                                                                 Done[Benchmarks]]:
    """Every trained model exported and quantized (``qat_sources``: what each one's quantization-aware fine-tune
    learns from, by name), then all their files benchmarked together; a host too busy to measure well is warned
    of in ``build_log``."""
    exports = [(name, role, model, build_log.stage(f"export: {name}", export_model(
        rt, plans.export, name, model, qat_sources.get(name)))) for name, role, model in trained]
    bench = build_log.stage(f"bench: {sum(len(e.result.files) for *_, e in exports)} files",
                            benchmark(rt, plans.bench, [(name, model, export) for name, _, model, export in exports]))
    if warning := bench.result.warning():
        build_log.warn(warning)
    return exports, bench


def refit_shipped(rt: Runtime, plans: BuildPlans, teacher_side: TeacherSide, shipped: Shipped,
                  budget: BudgetConfig, build_log: BuildLog) -> Shipped:
    """``shipped`` with its method refit on train + validation (:mod:`factory.stages.refit`), exported as its
    export decided and benchmarked; the chosen model's files stay the ones published, with a note, when the
    refit misses a budget limit the chosen model met or its quantization cannot be replayed."""
    chosen = shipped.model
    used = used_attempt(chosen.export.result)
    if used is not None and used.qat_epochs:
        build_log.notes.append(f"refit skipped: {chosen.name}'s quantized file comes from a quantization-aware "
                               "fine-tune, which a refit does not replay; the model as decided ships")
        return shipped
    name = f"{chosen.name} (refit)"
    runs = [(label, build_log.stage(label, done)) for label, done in refit_trained(
        rt, chosen.name, plans.of_method(chosen.name), teacher_side.teacher, plans.teacher_cache)]
    trained = runs[-1][1]
    export = build_log.stage(f"export: {name}", export_refit(rt, RefitExportPlan.decided(plans.export, chosen.export.result),
                                                    name, trained, chosen.export.result))
    bench = build_log.stage(f"bench: {name}", benchmark(rt, plans.bench, [(name, trained, export)]))
    refit = refit_deployed(name, chosen, trained, export, bench.result)
    accuracy = float(chosen.val_correct().mean())  # the floor as decided: the refit has no held-out images
    missed = [c.name for c in not_met(check_budget(budget, Measures.of(refit, accuracy)))]
    if missed and not next(o for o in shipped.options if o.name == chosen.name).misses:
        build_log.notes.append(f"refit not shipped: {name} misses {', '.join(missed)}, which {chosen.name} met; "
                               "the model as decided ships")
        return shipped
    why = (f"{shipped.why}; then refit on train + validation ({len(rt.data.train) + len(rt.data.val)} images), "
           f"{refit.ships.precision} as decided, {refit.ships.accuracy * 100:.1f}% on test against "
           f"{chosen.ships.accuracy * 100:.1f}% before the refit")
    return dataclasses.replace(shipped, refit=refit, refit_runs=runs, why=why)


@dataclass(frozen=True)
class TeacherSide:
    """The teacher and what is made with it before the students train."""

    runtime: Runtime
    """The build's runtime, its task data with the synthetic images kept (when any)."""
    teacher: Done[AdaptedTeacher]
    augment: Done[SyntheticImages] | None = None
    augment_filter: Done[FilteredImages] | None = None
    teacher_cache: Done[TeacherCache] | None = None


def prepare_teacher(rt: Runtime, plans: TaskPlans, recipe: Recipe, build_log: BuildLog) -> TeacherSide:
    """Synthetic images (when asked), the adapted teacher, its filter of the synthetic images, and its cache."""
    synthetic = kept = None
    if plans.augment is not None:
        synthetic = build_log.stage(f"augment: {recipe.augment.pipeline} ({recipe.augment.mode})",
                           synthesize(rt, plans.augment, recipe.augment.batch_size))
    teacher = build_log.stage(f"teacher: {recipe.teacher.model} ({recipe.teacher.adapt})",
                              adapt_teacher(rt, plans.teacher))
    if synthetic is not None:  # the teacher, adapted on the real images, vouches for the synthetic ones
        if plans.augment_filter is not None:
            kept = build_log.stage("augment filter", filter_synthetic(rt, plans.augment_filter, synthetic, teacher))
            log(f"  synthetic images kept {kept.result.kept}, dropped {kept.result.dropped} by the teacher")
        manifest = kept or synthetic
        rt = rt.with_data(rt.data.with_synthetic(
            synthetic_samples(read_manifest(manifest.file(MANIFEST)), synthetic.path, rt.data.classes), manifest.key))
    teacher_cache = None
    if plans.teacher_cache is not None:
        teacher_cache = build_log.stage("teacher cache", cache_teacher_outputs(rt, plans.teacher_cache, teacher))
    return TeacherSide(rt, teacher, synthetic, kept, teacher_cache)


@dataclass(frozen=True)
class TrainedModels:
    """The distilled student and the comparisons the recipe asks for (None: not asked, or skipped with a note)."""

    distill: Done[DistilledStudent]
    distill_pretrained: Done[DistilledStudent] | None
    scratch: Done[BaselineStudent] | None
    finetune: Done[BaselineStudent] | None

    def in_order(self, teacher: Done) -> list[tuple[str, str, Done]]:
        """(name, role, run) of every trained model, the teacher last."""
        named = [(m.name, m.role, teacher if m.role == "teacher" else getattr(self, m.attr)) for m in METHODS]
        return [(name, role, run) for name, role, run in named if run is not None]

    @staticmethod
    def qat_sources(teacher_side: TeacherSide) -> dict[str, QatSource]:
        """What each student's quantization-aware fine-tune learns from, by name: the teacher for the methods
        that distil, the labels for the others, as each trained (the teacher itself has none)."""
        distils = QatSource(teacher_side.teacher, teacher_side.teacher_cache)
        return {m.name: distils if m.distils else QatSource() for m in METHODS if m.role != "teacher"}


def train_models(rt: Runtime, plans: BuildPlans, teacher_side: TeacherSide, build_log: BuildLog) -> TrainedModels:
    """The distilled student and the baselines the recipe asks for; one whose weights cannot be reached is
    skipped with a note in ``build_log``."""
    teacher, teacher_cache = teacher_side.teacher, teacher_side.teacher_cache
    distilled = build_log.stage("distill", distill_student(rt, plans.distill, teacher, teacher_cache))
    pretrained = None
    if plans.distill_pretrained is not None:
        try:
            pretrained = build_log.stage("distill: pretrained student",
                                distill_student(rt, plans.distill_pretrained, teacher, teacher_cache))
        except HubUnreachableError as err:
            build_log.notes.append(f"pretrained student distilled: skipped: {err}")
    baselines = []
    for name, plan in (("scratch", plans.scratch), ("pretrained-finetuned", plans.finetune)):
        baseline, skipped = try_baseline(rt, plan)
        baselines.append(None if baseline is None else build_log.stage(f"baseline: {name}", baseline))
        if skipped:
            build_log.notes.append(skipped)
            log(f"  [yellow]skipped[/] {skipped}")
    return TrainedModels(distilled, pretrained, *baselines)


def choose_student(rt: Runtime, recipe: Recipe, plans: TaskPlans, measured: list[Path] | None = None) -> StudentListing:
    """Measure the candidate students for ``recipe``'s budget (:func:`list_students`), exported and benchmarked as
    ``plans`` say; NoStudentFits with the nearest misses when none fits."""
    listing = list_students(rt, recipe, plans.export, plans.bench, measured)
    if not listing.admitted:
        raise NoStudentFits(no_fit_message(listing, recipe), listing)
    return listing


def students(recipe: Recipe, measured: list[Path] | None = None, cache_dir: Path | None = None) -> StudentListing:
    """The candidate listing of ``factory students``: every candidate measured for ``recipe``'s budget."""
    cache_dir = cache_dir or DEFAULT_CACHE
    rt = Runtime(load_task_data(recipe.data, cache_dir), StageCache(cache_dir), torch.device("cpu"),
                 recipe.data.num_workers)
    return choose_student(rt, recipe, TaskPlans.from_recipe(recipe, rt.data, int8_conv_exact()), measured)
