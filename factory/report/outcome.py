"""What a build made, typed: one field per stage output (None when the recipe did not ask for that stage). The
report is assembled from it."""

from __future__ import annotations

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

CHANGES_NO_RESULT = True


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
    stage_runs: list[tuple[str, Done]] = field(default_factory=list)
    """(label, output) of every stage the build ran or read from the cache, in the order it ran them
    (:class:`factory.stage.BuildLog`)."""
    notes: list[str] = field(default_factory=list)
