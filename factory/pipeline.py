"""``build()``: the factory's stages in order, each cached under the hash of what it reads.

Every stage's plan is made from the recipe before any work starts (:class:`BuildPlans`); then the
stages run top to bottom, each getting its plan and the typed results of the stages before it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from factory import distributed as dist
from factory.cache import (
    DEFAULT_CACHE,
    Done,
    StageCache,
    check_output_folders,
)
from factory.console import log
from factory.context import Runtime
from factory.errors import HubUnreachableError
from factory.models import checkpoint_architecture
from factory.recipe import Recipe
from factory.sources import load_task_data
from factory.stages.augment import (
    MANIFEST,
    AugmentPlan,
    FilterPlan,
    filter_synthetic,
    read_manifest,
    synthesize,
    synthetic_samples,
)
from factory.stages.baselines import BaselinePlan, try_baseline
from factory.stages.bench import Benchmarks, BenchPlan, benchmark
from factory.stages.distill import DistillPlan, distill_student
from factory.stages.export import ExportPlan, export_model
from factory.stages.report import publish
from factory.stages.search import SearchResult, search_student, with_student
from factory.stages.select import (
    NoStudentFits,
    SelectPlan,
    StudentChoice,
    StudentListing,
    check_student_fits,
    list_students,
    no_fit_message,
    select_student,
)
from factory.stages.ship import Deployed, Shipped, choose_shipped, deployed
from factory.stages.teacher import (
    TeacherCachePlan,
    TeacherPlan,
    adapt_teacher,
    cache_teacher_outputs,
)
from factory.task import TaskData


@dataclass(frozen=True)
class BuildPlans:
    """What each stage reads from the recipe (None: the stage does not run)."""

    select: SelectPlan
    augment: AugmentPlan | None
    augment_filter: FilterPlan | None
    teacher: TeacherPlan
    teacher_cache: TeacherCachePlan | None
    distill: DistillPlan
    distill_pretrained: DistillPlan | None
    scratch: BaselinePlan | None
    finetune: BaselinePlan | None
    export: ExportPlan
    bench: BenchPlan

    @classmethod
    def from_recipe(cls, recipe: Recipe, data: TaskData) -> BuildPlans:
        n = data.num_classes
        return cls(
            select=SelectPlan.from_recipe(recipe, n),
            augment=AugmentPlan.from_recipe(recipe, data),
            augment_filter=FilterPlan.from_recipe(recipe),
            teacher=TeacherPlan.from_recipe(recipe, n),
            teacher_cache=TeacherCachePlan.from_recipe(recipe),
            distill=DistillPlan.from_recipe(recipe, n),
            distill_pretrained=DistillPlan.pretrained_from_recipe(recipe, n),
            scratch=BaselinePlan.from_recipe(recipe, "scratch", n),
            finetune=BaselinePlan.from_recipe(recipe, "finetune", n),
            export=ExportPlan.from_recipe(recipe),
            bench=BenchPlan.from_recipe(recipe),
        )


@dataclass
class BuildOutcome:
    """Everything the report is written from."""

    recipe: Recipe
    data: TaskData
    device: str
    student: StudentChoice
    models: list[Deployed]
    bench: Benchmarks
    shipped: Shipped
    selection: StudentListing | None
    """The measured candidates, when ``student.model`` was auto."""
    search: SearchResult | None
    """How the student was chosen among them, when ``student.model`` was auto."""
    stages: list[tuple[str, Done]]
    """(label, output) of every stage run or read from the cache, in order."""
    notes: list[str] = field(default_factory=list)

    def model(self, name: str) -> Deployed | None:
        return next((m for m in self.models if m.name == name), None)


@dataclass
class BuildResult:
    out_dir: Path
    report: dict


def build(recipe: Recipe, device: str = "auto", force: bool = False, cache_dir: Path | None = None,
          out_dir: Path | None = None) -> BuildResult:
    """Run every stage of ``recipe`` and write ``exports/<name>/``; unchanged stages come from the cache."""
    cache_dir = cache_dir or DEFAULT_CACHE
    out_dir = Path(out_dir or Path("exports") / recipe.name)
    check_output_folders(out_dir, "report.json", Path(cache_dir))
    rt = Runtime(load_task_data(recipe.data, cache_dir), StageCache(cache_dir, force),
                 dist.training_device(dist.resolve_device(device)), recipe.data.num_workers)
    log(f"[bold]factory build[/] {recipe.name}: {rt.data.num_classes} classes, {len(rt.data.train)} train / "
        f"{len(rt.data.val)} val / {len(rt.data.test)} test images from {rt.data.source}, device {rt.device}")
    stages: list[tuple[str, Done]] = []
    notes: list[str] = []

    def done(label: str, output: Done) -> Done:
        stages.append((label, output))
        log(f"  {'[dim]cached[/]' if output.cached else '[green]done[/]  '} {label} ({output.wall_s:.1f}s)")
        return output

    rt.data.check_split()  # every decision needs a validation split: fail before any work
    asked, listing, search = recipe, None, None
    if asked.student.model == "auto":
        listing = choose_student(rt, asked)
        recipe = with_student(asked, listing.admitted[0])  # the teacher's plans do not read it
    plans = BuildPlans.from_recipe(recipe, rt.data)
    teacher, teacher_cache = prepare_teacher(rt, plans, recipe, done)
    if listing is not None:
        search = search_student(rt, asked, listing.rows, teacher, teacher_cache, done)
        recipe = with_student(asked, search.winner)
        plans = BuildPlans.from_recipe(recipe, rt.data)
        if recipe.baseline != asked.baseline:
            notes.append(skipped := baseline_mismatch(asked, recipe.student.model))
            log(f"  [yellow]skipped[/] {skipped}")
    student = done(f"select: {recipe.student.model}", select_student(rt, plans.select))
    check_student_fits(student.result, recipe)
    trained = train_models(rt, plans, teacher, teacher_cache, done, notes)
    exports = [(name, role, model, done(f"export: {name}", export_model(rt, plans.export, name, model)))
               for name, role, model in trained]
    bench = done(f"bench: {sum(len(e.result.files) for *_, e in exports)} files",
                 benchmark(rt, plans.bench, [(name, model, export) for name, _, model, export in exports]))
    if warning := bench.result.warning():
        log(f"  [yellow]warning[/] {warning}")
        notes.append(warning)
    teacher_size = SelectPlan(recipe.teacher.model, teacher.result.preprocess.size, rt.data.num_classes)
    teacher_macs = done("select: teacher", select_student(rt, teacher_size)).result.macs
    models = [deployed(name, role, model, export, bench.result,
                       teacher_macs if role == "teacher" else student.result.macs, recipe.budget.max_size_mb)
              for name, role, model, export in exports]
    shipped = choose_shipped(models, recipe.budget, recipe.ship)
    log(f"  shipped: {shipped.why}")
    if not dist.is_main():
        return BuildResult(out_dir, {})
    outcome = BuildOutcome(recipe, rt.data, str(rt.device), student.result, models, bench.result, shipped, listing,
                           search, stages, notes)
    return BuildResult(out_dir, publish(outcome, out_dir))


def prepare_teacher(rt: Runtime, plans: BuildPlans, recipe: Recipe, done) -> tuple[Done, Done | None]:
    """Synthetic images (when asked), the adapted teacher, its filter of the synthetic images, and its cache."""
    synthetic = None
    if plans.augment is not None:
        synthetic = done(f"augment: {recipe.augment.pipeline} ({recipe.augment.mode})",
                         synthesize(rt, plans.augment, recipe.augment.batch_size))
    teacher = done(f"teacher: {recipe.teacher.model} ({recipe.teacher.adapt})", adapt_teacher(rt, plans.teacher))
    if synthetic is not None:  # the teacher, adapted on the real images, vouches for the synthetic ones
        manifest = synthetic
        if plans.augment_filter is not None:
            manifest = done("augment filter", filter_synthetic(rt, plans.augment_filter, synthetic, teacher))
            log(f"  synthetic images kept {manifest.result.kept}, dropped {manifest.result.dropped} by the teacher")
        rt.data = rt.data.with_synthetic(
            synthetic_samples(read_manifest(manifest.file(MANIFEST)), synthetic.path, rt.data.classes), manifest.key)
    teacher_cache = None
    if plans.teacher_cache is not None:
        teacher_cache = done("teacher cache", cache_teacher_outputs(rt, plans.teacher_cache, teacher))
    return teacher, teacher_cache


def train_models(rt: Runtime, plans: BuildPlans, teacher: Done, teacher_cache: Done | None, done,
                 notes: list[str]) -> list[tuple[str, str, Done]]:
    """(name, role, run) of every trained model: the distilled student, the baselines the recipe asks for (a
    baseline whose weights cannot be reached is skipped with a note), and the teacher."""
    trained: list[tuple[str, str, Done]] = [
        ("distilled", "student", done("distill", distill_student(rt, plans.distill, teacher, teacher_cache)))]
    if plans.distill_pretrained is not None:
        try:
            trained.append(("distilled-pretrained", "baseline", done("distill: pretrained student", distill_student(
                rt, plans.distill_pretrained, teacher, teacher_cache))))
        except HubUnreachableError as err:
            notes.append(f"pretrained student distilled: skipped: {err}")
    for name, plan in (("scratch", plans.scratch), ("pretrained-finetuned", plans.finetune)):
        baseline, skipped = try_baseline(rt, plan)
        if baseline is not None:
            trained.append((name, "baseline", done(f"baseline: {name}", baseline)))
        if skipped:
            notes.append(skipped)
            log(f"  [yellow]skipped[/] {skipped}")
    trained.append(("teacher", "teacher", teacher))
    return trained


def choose_student(rt: Runtime, recipe: Recipe, measured: list[Path] | None = None) -> StudentListing:
    """Measure the candidate students for ``recipe``'s budget (:func:`list_students`); NoStudentFits with the
    nearest misses when none fits."""
    listing = list_students(rt, recipe, rt.data.num_classes, measured)
    if not listing.admitted:
        raise NoStudentFits(no_fit_message(listing, recipe), listing)
    return listing


def baseline_mismatch(recipe: Recipe, model: str) -> str:
    weights = recipe.baseline.weights
    return (f"pretrain-then-finetune baseline{' and pretrained student distilled' * recipe.baseline.distill_pretrained}"
            f" skipped: baseline.weights {weights} hold {checkpoint_architecture(weights)} weights and student.model: "
            f"auto chose {model}; pre-train {model} with `factory pretrain` (or set baseline.weights: timm, online) "
            "to compare against it")


def students(recipe: Recipe, measured: list[Path] | None = None, cache_dir: Path | None = None) -> StudentListing:
    """The candidate listing of ``factory students``: every candidate measured for ``recipe``'s budget."""
    cache_dir = cache_dir or DEFAULT_CACHE
    rt = Runtime(load_task_data(recipe.data, cache_dir), StageCache(cache_dir), torch.device("cpu"),
                 recipe.data.num_workers)
    return choose_student(rt, recipe, measured)
