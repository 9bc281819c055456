"""What a build made, typed: one field per stage output (None when the recipe did not ask for that stage). The
report is assembled from it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from factory.stage import Done
    from factory.stages.apps import AppFiles
    from factory.recipe import Recipe
    from factory.stages.augment import SyntheticImages
    from factory.stages.augment_filter import FilteredImages
    from factory.stages.baselines import BaselineStudent
    from factory.stages.bench import Benchmarks
    from factory.stages.distill import DistilledStudent
    from factory.decide.search import SearchResult
    from factory.stages.select import StudentChoice
    from factory.decide.listing import StudentListing
    from factory.decide.ship import Deployed, Shipped
    from factory.stages.teacher import AdaptedTeacher, TeacherCache
    from factory.task import TaskData

CHANGES_NO_RESULT = True  # no stage result depends on this module (factory.identity)


@dataclass(frozen=True)
class BuildOutcome:
    """Every stage output of one build, the models as deployed, and which one ships."""

    recipe: Recipe
    """The recipe as built (with ``student.model: auto``, the chosen student's)."""
    data: TaskData
    """The task data the models trained on (with the synthetic images kept, if any)."""
    device: str
    select: Done[StudentChoice]
    """The student's size (parameters, MACs)."""
    teacher: Done[AdaptedTeacher]
    distill: Done[DistilledStudent]
    bench: Done[Benchmarks]
    teacher_size: Done[StudentChoice]
    """The teacher's size, sized as a student is."""
    models: list[Deployed]
    """Every trained model exported and benchmarked, in training order, the teacher last."""
    shipped: Shipped
    augment: Done[SyntheticImages] | None = None
    augment_filter: Done[FilteredImages] | None = None
    teacher_cache: Done[TeacherCache] | None = None
    selection: StudentListing | None = None
    """The measured candidates, when ``student.model`` was auto."""
    search: SearchResult | None = None
    """How the student was chosen among them, when ``student.model`` was auto."""
    distill_pretrained: Done[DistilledStudent] | None = None
    scratch: Done[BaselineStudent] | None = None
    finetune: Done[BaselineStudent] | None = None
    apps: Done[AppFiles] | None = None
    """The published model's forms for apps (None: ``export.formats`` asks for the ONNX file alone)."""
    notes: list[str] = field(default_factory=list)

    def stage_runs(self) -> Iterator[tuple[str, Done]]:
        """(label, output) of every stage the build ran or read from the cache, in the order it ran them."""
        r = self.recipe
        if self.augment is not None:
            yield f"augment: {r.augment.pipeline} ({r.augment.mode})", self.augment
        yield f"teacher: {r.teacher.model} ({r.teacher.adapt})", self.teacher
        if self.augment_filter is not None:
            yield "augment filter", self.augment_filter
        if self.teacher_cache is not None:
            yield "teacher cache", self.teacher_cache
        for run in self.search.runs if self.search else []:
            yield run.label, run.done
        yield f"select: {r.student.model}", self.select
        yield "distill", self.distill
        if self.distill_pretrained is not None:
            yield "distill: pretrained student", self.distill_pretrained
        for name, baseline in (("scratch", self.scratch), ("pretrained-finetuned", self.finetune)):
            if baseline is not None:
                yield f"baseline: {name}", baseline
        for model in self.models:
            yield f"export: {model.name}", model.export
        yield f"bench: {sum(len(m.export.result.files) for m in self.models)} files", self.bench
        yield "select: teacher", self.teacher_size
        yield from self.shipped.refit_runs
        if self.apps is not None:
            yield "apps: the shipped model's forms", self.apps
