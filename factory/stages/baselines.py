"""Comparisons trained exactly as the distilled student is (same images, the same seeded views in the same
order, same epochs, batch size, schedule and seed), so that they differ from it only in loss (CE alone)
and initialisation: the student from scratch, and the student pre-trained then finetuned."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING


from factory.stage import Done, Plan, Stage
from factory.context import Runtime
from factory.data import ViewPlan, preprocess_for
from factory.errors import HubUnreachableError
from factory.models import Pinned, create_model, unchanged
from factory.stages.distill import student_training
from factory.train_stage import Trainee, train_stage
from factory.train import ClassifierObjective, TrainedModel, TrainSettings, param_groups

if TYPE_CHECKING:
    from factory.recipe import Recipe


@dataclass(frozen=True)
class BaselinePlan(Plan):
    kind: str
    """'scratch' (random init) or 'finetune' (from ``weights``)."""
    student: str
    weights: Pinned | None
    num_classes: int
    lr: float
    train: TrainSettings
    views: ViewPlan
    image_size: int
    """The student's own resolution (its views may be rendered larger: :func:`factory.stages.teacher.view_size`)."""
    synthetic: bool
    """Trained on the synthetic images too (augment.for_baselines), or on the real ones only."""

    @classmethod
    def from_recipe(cls, recipe: Recipe, kind: str, num_classes: int) -> BaselinePlan | None:
        """The plan of the ``kind`` baseline, or None when the recipe turns it off."""
        b, d = recipe.baseline, recipe.distill
        if not (b.scratch if kind == "scratch" else b.pretrained and b.weights is not None):
            return None
        weights = None if kind == "scratch" else b.weights
        train, views = student_training(recipe)
        return cls(kind, recipe.student.model, Pinned.of(weights), num_classes,
                   d.lr if kind == "scratch" else (b.lr or d.lr), train, views, recipe.data.image_size,
                   recipe.augment.enabled and recipe.augment.for_baselines)


@dataclass(kw_only=True)
class BaselineStudent(TrainedModel):
    kind: str


BASELINE_LABEL = {"scratch": "from-scratch", "finetune": "pretrain-then-finetune"}
BASELINE = {kind: Stage(f"baseline_{kind}", BaselineStudent, __name__, ("torch", "torchvision", "timm"),
                        distributed=True) for kind in ("scratch", "finetune")}


def train_baseline(rt: Runtime, plan: BaselinePlan) -> Done[BaselineStudent]:
    """Train the student with CE only, from random init or from ``plan.weights``.

    Raises :class:`HubUnreachableError` when the finetune baseline's weights cannot be fetched.
    """

    data = rt.data if plan.synthetic else rt.data.real_only()  # what it trains on is what its key holds

    def build() -> Trainee:
        weights = unchanged(plan.weights, "baseline.weights")
        model = create_model(plan.student, weights, plan.num_classes, field="baseline.weights")
        preprocess = preprocess_for(model, plan.image_size)
        return Trainee(model, preprocess, ClassifierObjective(model, preprocess),
                       param_groups(model, plan.train.weight_decay, plan.lr), rt.train_views(plan.views, data),
                       weights)

    def run(work: Path) -> BaselineStudent | None:
        trained = train_stage(rt, plan.train, work, f"baseline ({plan.kind})", build)
        return None if trained is None else BaselineStudent(**trained.fields(plan.student), kind=plan.kind)

    return rt.cache.run(BASELINE[plan.kind], plan, {"data": data.fingerprint}, run)


def try_baseline(rt: Runtime, plan: BaselinePlan | None) -> tuple[Done[BaselineStudent] | None, str | None]:
    """The baseline, or ``(None, reason)`` when the recipe turns it off or its weights are unreachable."""
    if plan is None:
        return None, None
    try:
        return train_baseline(rt, plan), None
    except HubUnreachableError as err:
        return None, f"{BASELINE_LABEL[plan.kind]} baseline skipped: {err}"
