"""Distillation: a randomly initialised student learns from the teacher (no pre-training of its own)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from factory.stage import Done, Plan, Stage
from factory.context import Runtime
from factory.data import Preprocess, ViewPlan, preprocess_for
from factory.losses import DistillLoss, LossSpec
from factory.models import Pinned, create_model, feature_dim, load_trained, pooled_and_logits, unchanged
from factory.stages.teacher import AdaptedTeacher, TeacherCache, TeacherOutputs, view_size
from factory.train_stage import Trainee, train_stage
from factory.train import TrainedModel, TrainSettings, autocast, param_groups, to_device

if TYPE_CHECKING:
    from factory.recipe import Recipe


def student_training(recipe: Recipe) -> tuple[TrainSettings, ViewPlan]:
    """How every student trains: the distilled one and both baselines use these settings and views, so that
    the methods differ only in loss and initialisation. With a teacher cache the views are its K seeded
    views per image; without one, a fresh seeded view per epoch."""
    d = recipe.distill
    return (TrainSettings(d.epochs, d.batch_size, d.weight_decay, d.warmup_epochs, d.seed),
            ViewPlan(d.seed, d.teacher_views, view_size(recipe)))


@dataclass(frozen=True)
class DistillPlan(Plan):
    student: str
    num_classes: int
    lr: float
    loss: LossSpec
    """Alignment/uniformity, cross-entropy and KD weights, temperature and the projection head."""
    train: TrainSettings
    views: ViewPlan
    image_size: int
    """The student's own resolution (``data.image_size``); its views may be rendered larger, for the teacher."""
    weights: Pinned | None = None
    """The student's initial weights (None: random init, the distilled method proper)."""

    @classmethod
    def from_recipe(cls, recipe: Recipe, num_classes: int) -> DistillPlan:
        d = recipe.distill
        train, views = student_training(recipe)
        return cls(recipe.student.model, num_classes, d.lr,
                   LossSpec.from_recipe(d.weights, d.temperature, d.proj_dim, d.proj_hidden), train, views,
                   recipe.data.image_size)

    @classmethod
    def pretrained_from_recipe(cls, recipe: Recipe, num_classes: int) -> DistillPlan | None:
        """The pretrained student distilled (``baseline.distill_pretrained``): the same loss and views, from
        ``baseline.weights`` at the finetune's learning rate; None when the recipe does not ask for it."""
        b = recipe.baseline
        if not (b.distill_pretrained and b.weights is not None):
            return None
        return dataclasses.replace(cls.from_recipe(recipe, num_classes), lr=b.lr or recipe.distill.lr,
                                   weights=Pinned.of(b.weights))


@dataclass(kw_only=True)
class DistilledStudent(TrainedModel):
    teacher_mode: str
    """'cached' (teacher outputs looked up per view) or 'online' (teacher run on every batch)."""


DISTILL = Stage("distill", DistilledStudent, __name__, ("torch", "torchvision", "timm"), distributed=True)


class DistillObjective(torch.nn.Module):
    """Student + projection heads (trained, checkpointed, DDP-wrapped); the teacher is a plain callable
    held outside the module tree, so it is neither trained, saved nor wrapped. ``features``: the student's
    ``(pooled features, logits)`` (default :func:`factory.models.pooled_and_logits`; the quantization-aware remedy
    passes its INT8 simulation's, in float32 with ``mixed_precision=False``, as autocast would change what the
    simulation computes)."""

    def __init__(self, student: torch.nn.Module, preprocess: Preprocess, loss: DistillLoss, teacher_fn,
                 features: Callable = pooled_and_logits, mixed_precision: bool = True):
        super().__init__()
        self.student = student
        self.preprocess = preprocess
        self.loss = loss
        self._teacher_fn = teacher_fn
        self._features, self._mixed_precision = features, mixed_precision

    def forward(self, images, labels, indices, views):
        t_feat, t_logits = self._teacher_fn(images, indices, views)
        with autocast(images.device) if self._mixed_precision else contextlib.nullcontext():
            s_feat, s_logits = self._features(self.student, self.preprocess(images))
        total, parts = self.loss(s_feat, s_logits, t_feat, t_logits, labels)
        return total, parts


def teacher_outputs(rt: Runtime, teacher: Done[AdaptedTeacher], teacher_cache: Done[TeacherCache] | None,
                    views) -> Callable:
    """``(images, indices, views) -> (features, logits)`` of the teacher on the training ``views``: read from its
    cache of views when there is one, else the teacher itself run frozen."""
    if teacher_cache is None:
        return frozen_teacher(*load_trained(teacher), rt.device)
    outputs = TeacherOutputs(teacher_cache, views)
    return lambda images, indices, view_ids: outputs(indices, view_ids, rt.device)


def frozen_teacher(model: torch.nn.Module, preprocess: Preprocess, device: torch.device):
    """``(images, indices, views) -> (features, logits)`` of a frozen teacher (inference mode, autocast,
    channels_last on CUDA)."""
    to_device(model, device).eval().requires_grad_(False)

    def forward(images, indices, views):
        with torch.inference_mode(), autocast(device):
            f, z = pooled_and_logits(model, preprocess(images))
        return f.float().clone(), z.float().clone()

    return forward


def distill_student(rt: Runtime, plan: DistillPlan, teacher: Done[AdaptedTeacher],
                    teacher_cache: Done[TeacherCache] | None) -> Done[DistilledStudent]:
    """Train the student from scratch with CE + KD + alignment/uniformity against the teacher."""

    def build() -> Trainee:
        weights = unchanged(plan.weights, "baseline.weights")
        student = create_model(plan.student, weights, plan.num_classes,
                               field="baseline.weights" if weights else "student.model")
        preprocess = preprocess_for(student, plan.image_size)
        loss = DistillLoss(feature_dim(student), teacher.result.feature_dim, plan.loss)
        views = rt.train_views(plan.views)
        objective = DistillObjective(student, preprocess, loss, teacher_outputs(rt, teacher, teacher_cache, views))
        return Trainee(student, preprocess, objective, param_groups(objective, plan.train.weight_decay, plan.lr),
                       views, weights)

    def run(work: Path) -> DistilledStudent | None:
        trained = train_stage(rt, plan.train, work, "distill", build)
        if trained is None:
            return None
        return DistilledStudent(**trained.fields(plan.student),
                                teacher_mode="cached" if teacher_cache is not None else "online")

    inputs = {"teacher": teacher, "teacher_cache": teacher_cache, "data": rt.data.fingerprint}
    return rt.cache.run(DISTILL, plan, inputs, run)
