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
from factory.errors import FactoryError
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
from factory.stages.bench import Benchmarks, BenchPlan, FileBench, benchmark
from factory.stages.distill import DistillPlan, distill_student
from factory.stages.export import Exported, ExportPlan, export_model
from factory.stages.report import publish
from factory.stages.select import (
    NoStudentFits,
    SelectPlan,
    StudentChoice,
    StudentListing,
    check_student_fits,
    list_students,
    no_fit_message,
    ranked,
    refine_rule,
    select_student,
)
from factory.stages.teacher import (
    TeacherCachePlan,
    TeacherPlan,
    adapt_teacher,
    cache_teacher_outputs,
)
from factory.task import TaskData
from factory.train import TrainedModel


@dataclass(frozen=True)
class BuildPlans:
    """What each stage reads from the recipe (None: the stage does not run)."""

    select: SelectPlan
    augment: AugmentPlan | None
    augment_filter: FilterPlan | None
    teacher: TeacherPlan
    teacher_cache: TeacherCachePlan | None
    distill: DistillPlan
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
            scratch=BaselinePlan.from_recipe(recipe, "scratch", n),
            finetune=BaselinePlan.from_recipe(recipe, "finetune", n),
            export=ExportPlan.from_recipe(recipe),
            bench=BenchPlan.from_recipe(recipe),
        )


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


@dataclass
class BuildOutcome:
    """Everything the report is written from."""

    recipe: Recipe
    data: TaskData
    device: str
    student: StudentChoice
    models: list[Deployed]
    bench: Benchmarks
    selection: StudentListing | None
    """The measured candidates, when ``student.model`` was auto."""
    stages: list[tuple[str, Done]]
    """(label, output) of every stage run or read from the cache, in order."""
    notes: list[str] = field(default_factory=list)

    def model(self, name: str) -> Deployed | None:
        return next((m for m in self.models if m.name == name), None)


@dataclass
class BuildResult:
    out_dir: Path
    report: dict


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without one is an error, not a silent fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise FactoryError("--device cuda: no CUDA device is visible to torch; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise FactoryError(f"--device {name!r}: expected cpu, cuda or auto")
    return torch.device(name)


def build(recipe: Recipe, device: str = "auto", force: bool = False, cache_dir: Path | None = None,
          out_dir: Path | None = None) -> BuildResult:
    """Run every stage of ``recipe`` and write ``exports/<name>/``; unchanged stages come from the cache."""
    cache_dir = cache_dir or DEFAULT_CACHE
    out_dir = Path(out_dir or Path("exports") / recipe.name)
    check_output_folders(out_dir, "report.json", Path(cache_dir))
    rt = Runtime(load_task_data(recipe.data, cache_dir), StageCache(cache_dir, force),
                 dist.process_device(resolve_device(device)), recipe.data.num_workers)
    log(f"[bold]factory build[/] {recipe.name}: {rt.data.num_classes} classes, {len(rt.data.train)} train / "
        f"{len(rt.data.val)} val / {len(rt.data.test)} test images from {rt.data.source}, device {rt.device}")
    stages: list[tuple[str, Done]] = []
    notes: list[str] = []

    def done(label: str, output: Done) -> Done:
        stages.append((label, output))
        log(f"  {'[dim]cached[/]' if output.cached else '[green]done[/]  '} {label} ({output.wall_s:.1f}s)")
        return output

    asked, selection = recipe, None
    if asked.student.model == "auto":
        selection = choose_student(rt, asked)
        recipe = with_student(asked, selection.choice.architecture)
    plans = BuildPlans.from_recipe(recipe, rt.data)
    student = done(f"select: {recipe.student.model}", select_student(rt, plans.select))
    check_student_fits(student.result, recipe)
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
    if selection is not None and asked.student.refine:
        refine_student(rt, asked, selection, teacher, teacher_cache, done)
        recipe = with_student(asked, selection.choice.architecture)
        plans = BuildPlans.from_recipe(recipe, rt.data)
        student = done(f"select: {recipe.student.model}", select_student(rt, plans.select))
    if selection is not None and recipe.baseline.pretrained != asked.baseline.pretrained:
        notes.append(skipped := baseline_mismatch(asked, recipe.student.model))
        log(f"  [yellow]skipped[/] {skipped}")
    distilled = done("distill", distill_student(rt, plans.distill, teacher, teacher_cache))
    trained: list[tuple[str, str, Done]] = [("distilled", "student", distilled)]
    for name, plan in (("scratch", plans.scratch), ("pretrained-finetuned", plans.finetune)):
        baseline, skipped = try_baseline(rt, plan)
        if baseline is not None:
            trained.append((name, "baseline", done(f"baseline: {name}", baseline)))
        if skipped:
            notes.append(skipped)
            log(f"  [yellow]skipped[/] {skipped}")
    trained.append(("teacher", "teacher", teacher))

    exports = [(name, role, model, done(f"export: {name}", export_model(rt, plans.export, name, model)))
               for name, role, model in trained]
    bench = done(f"bench: {sum(len(e.result.files) for *_, e in exports)} files",
                 benchmark(rt, plans.bench, [(name, model, export) for name, _, model, export in exports]))
    if warning := bench.result.warning():
        log(f"  [yellow]warning[/] {warning}")
        notes.append(warning)
    models = [deployed(name, role, model, export, bench.result, recipe.budget.max_size_mb)
              for name, role, model, export in exports]
    if not dist.is_main():
        return BuildResult(out_dir, {})
    outcome = BuildOutcome(recipe, rt.data, str(rt.device), student.result, models, bench.result, selection, stages,
                           notes)
    return BuildResult(out_dir, publish(outcome, out_dir))


def choose_student(rt: Runtime, recipe: Recipe, measured: list[Path] | None = None) -> StudentListing:
    """Measure the candidate students for ``recipe``'s budget (:func:`list_students`); NoStudentFits with the
    nearest misses when none fits."""
    listing = list_students(rt, recipe, rt.data.num_classes, measured)
    if listing.choice is None:
        raise NoStudentFits(no_fit_message(listing, recipe), listing)
    return listing


def with_student(recipe: Recipe, model: str) -> Recipe:
    """``recipe`` with ``student.model`` set to the chosen architecture (every later stage reads it), and the
    pretrain-then-finetune baseline turned off when its local weights are another architecture's
    (:func:`baseline_mismatch` says so)."""
    updates = {"student": recipe.student.model_copy(
        update={"model": model, "candidates": [], "exclude": [], "refine": 0})}
    weights = recipe.baseline.weights if recipe.baseline.pretrained else None
    if checkpoint_architecture(weights) not in (None, model):
        updates["baseline"] = recipe.baseline.model_copy(update={"pretrained": False})
    return recipe.model_copy(update=updates)


def baseline_mismatch(recipe: Recipe, model: str) -> str:
    weights = recipe.baseline.weights
    return (f"pretrain-then-finetune baseline skipped: baseline.weights {weights} hold "
            f"{checkpoint_architecture(weights)} weights and student.model: auto chose {model}; pre-train {model} "
            f"with `factory pretrain` (or set baseline.weights: timm, online) to compare against it")


def refine_student(rt: Runtime, recipe: Recipe, listing: StudentListing, teacher: Done[TrainedModel],
                   teacher_cache: Done | None, done) -> None:
    """``student.refine``: distil the best candidates by prior for ``student.refine_epochs`` each from the
    teacher (cache) and make the one with the highest validation accuracy ``listing.choice``."""
    s = recipe.student
    for row in ranked(listing.rows)[:s.refine]:
        short = with_student(recipe, row.architecture)
        short = short.model_copy(update={"distill": short.distill.model_copy(update={"epochs": s.refine_epochs})})
        plan = DistillPlan.from_recipe(short, rt.data.num_classes)
        trained = done(f"refine: {row.architecture} ({s.refine_epochs} epochs)",
                       distill_student(rt, plan, teacher, teacher_cache))
        row.refined_val = trained.result.history[-1].get("val_accuracy")
        if row.refined_val is None:
            raise FactoryError(f"student.refine: the validation split of {rt.data.source} is empty; raise "
                               f"data.val_fraction (now {recipe.data.val_fraction})")
    listing.choice = max((r for r in listing.rows if r.refined_val is not None), key=lambda r: r.refined_val)
    listing.rule += "; then " + refine_rule(s.refine, s.refine_epochs)
    log(f"  student after refine: {listing.choice.architecture} (validation accuracy "
        f"{listing.choice.refined_val * 100:.1f}%)")


def students(recipe: Recipe, measured: list[Path] | None = None, cache_dir: Path | None = None) -> StudentListing:
    """The candidate listing of ``factory students``: every candidate measured for ``recipe``'s budget."""
    cache_dir = cache_dir or DEFAULT_CACHE
    rt = Runtime(load_task_data(recipe.data, cache_dir), StageCache(cache_dir), torch.device("cpu"),
                 recipe.data.num_workers)
    return choose_student(rt, recipe, measured)


def deployed(name: str, role: str, trained: Done[TrainedModel], export: Done[Exported], bench: Benchmarks,
             max_size_mb: float | None = None) -> Deployed:
    """One model's files as benchmarked, and the precision it would ship at (:func:`choose_precision`)."""
    fp32 = bench.of(name, "model.onnx")
    quant = export.result.quantization
    quantized = bench.of(name, quant.file) if quant is not None and quant.file is not None else None
    ships, why = choose_precision(bench, fp32, quantized, quant.reason if quant else None, max_size_mb)
    return Deployed(name, role, trained, export, fp32, quantized, ships, why)


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
