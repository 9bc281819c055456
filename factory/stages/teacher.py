"""Teacher stages: fit the teacher to the task, then cache its outputs on K seeded views per image."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader

from factory.stage import Done, Plan, Stage, StageResult
from factory.console import progress_bar
from factory.context import Runtime
from factory.data import ViewPlan, preprocess_for
from factory.errors import FactoryError
from factory.models import Pinned, create_model, load_trained, pooled_and_logits, unchanged, weights_input_size
from factory.train_stage import Trainee, train_stage
from factory.train import ClassifierObjective, TrainedModel, TrainSettings, autocast, param_groups, to_device

if TYPE_CHECKING:
    from factory.recipe import Recipe


def teacher_image_size(recipe: Recipe) -> int:
    """``teacher.image_size``, else the size its weights were trained at (:func:`factory.models.weights_input_size`),
    else ``data.image_size``."""
    t = recipe.teacher
    return t.image_size or weights_input_size(t.model, t.weights) or recipe.data.image_size


def view_size(recipe: Recipe) -> int:
    """The size every student's training views (and the teacher cache's) are rendered at: the larger of the
    student's and the teacher's resolution, so the teacher sees each view as sharp as it was finetuned on and
    the student's preprocessing scales the very same crop down to its own size."""
    return max(recipe.data.image_size, teacher_image_size(recipe))


@dataclass(frozen=True)
class TeacherPlan(Plan):
    model: str
    weights: Pinned | None
    adapt: str
    lr: float
    body_lr_scale: float | None
    """Finetuning only: the body's learning rate is ``lr * body_lr_scale``."""
    image_size: int
    """The one resolution the teacher is finetuned, evaluated, cached and exported at (its training views too)."""
    num_classes: int
    train: TrainSettings
    views: ViewPlan

    @classmethod
    def from_recipe(cls, recipe: Recipe, num_classes: int) -> TeacherPlan:
        t, size = recipe.teacher, teacher_image_size(recipe)
        return cls(
            model=t.model, weights=Pinned.of(t.weights), adapt=t.adapt, lr=t.lr,
            body_lr_scale=t.body_lr_scale if t.adapt == "finetune" else None, image_size=size, num_classes=num_classes,
            train=TrainSettings(t.epochs, t.batch_size, t.weight_decay, t.warmup_epochs, t.seed),
            views=ViewPlan(t.seed + 101, 0, size),
        )


@dataclass(kw_only=True)
class AdaptedTeacher(TrainedModel):
    adapt: str
    test_accuracy: float
    forward_flops_per_image: float

    @property
    def macs(self) -> int:
        """Multiply-accumulates per image at its resolution, counted as a student's are (:mod:`factory.stages.select`)."""
        return int(self.forward_flops_per_image // 2)


TEACHER = Stage("teacher", AdaptedTeacher, __name__, ("torch", "torchvision", "timm"), distributed=True)


def adapt_teacher(rt: Runtime, plan: TeacherPlan) -> Done[AdaptedTeacher]:
    """Build the teacher from its weights and adapt it to the task (scratch, linear probe or finetune)."""

    def build() -> Trainee:
        weights = unchanged(plan.weights, "teacher.weights")
        model = create_model(plan.model, weights, plan.num_classes, field="teacher.weights", image_size=plan.image_size)
        preprocess = preprocess_for(model, plan.image_size)
        head_ids = {id(p) for p in model.get_classifier().parameters()}
        if plan.adapt == "linear_probe":
            for p in model.parameters():
                p.requires_grad_(id(p) in head_ids)
        lr_of = {id(p): plan.lr * plan.body_lr_scale for p in model.parameters() if id(p) not in head_ids} \
            if plan.adapt == "finetune" else None
        return Trainee(model, preprocess, ClassifierObjective(model, preprocess),
                       param_groups(model, plan.train.weight_decay, plan.lr, lr_of), rt.train_views(plan.views),
                       weights)

    def run(work: Path) -> AdaptedTeacher | None:
        trained = train_stage(rt, plan.train, work, f"teacher ({plan.adapt})", build)
        if trained is None:
            return None
        return AdaptedTeacher(**trained.fields(plan.model), adapt=plan.adapt, test_accuracy=trained.test_accuracy(rt),
                              forward_flops_per_image=trained.forward_flops_per_image(rt))

    return rt.cache.run(TEACHER, plan, {"data": rt.data.fingerprint}, run)


@dataclass(frozen=True)
class TeacherCachePlan(Plan):
    views: ViewPlan

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> TeacherCachePlan | None:
        """None when the recipe asks for an online teacher (``distill.teacher_views: 0``)."""
        d = recipe.distill
        return cls(ViewPlan(d.seed, d.teacher_views, view_size(recipe))) if d.teacher_views else None


@dataclass(kw_only=True)
class TeacherCache(StageResult):
    images: int
    views: int
    feature_dim: int
    views_digest: str
    """Digest of a few rendered views: distillation refuses the cache if the same seeds render other pixels."""


TEACHER_CACHE = Stage("teacher_cache", TeacherCache, __name__, ("torch", "torchvision", "timm", "pillow"))


def cache_teacher_outputs(rt: Runtime, plan: TeacherCachePlan, teacher: Done[AdaptedTeacher]) -> Done[TeacherCache]:
    """Pooled features and logits of the teacher on ``plan.views.num_views`` seeded views of every image.

    Stored as float16 ``.npy`` arrays of shape (images * views, dim), memory-mapped at training time.
    """

    def run(work: Path) -> TeacherCache:
        model, preprocess = load_trained(teacher)
        to_device(model, rt.device)
        views = rt.train_views(plan.views)
        n, k = len(views), plan.views.num_views
        pairs = [(i, v) for i in range(n) for v in range(k)]
        feats = logits = None
        loader = DataLoader(_ViewPairs(views, pairs), batch_size=128, num_workers=rt.num_workers)
        done = 0
        with torch.inference_mode(), progress_bar() as bar:
            task = bar.add_task(f"teacher cache ({k} views x {n} images)", total=len(pairs))
            for images in loader:
                with autocast(rt.device):
                    f, z = pooled_and_logits(model, preprocess(images.to(rt.device)))
                if feats is None:
                    feats = np.lib.format.open_memmap(work / "features.npy", "w+", np.float16, (n * k, f.shape[1]))
                    logits = np.lib.format.open_memmap(work / "logits.npy", "w+", np.float16, (n * k, z.shape[1]))
                feats[done:done + len(f)] = f.float().cpu().numpy()
                logits[done:done + len(z)] = z.float().cpu().numpy()
                done += len(f)
                bar.update(task, advance=len(f))
        feats.flush()
        logits.flush()
        return TeacherCache(images=n, views=k, feature_dim=int(feats.shape[1]), views_digest=views.digest(),
                            flops=teacher.result.forward_flops_per_image * n * k)

    return rt.cache.run(TEACHER_CACHE, plan, {"teacher": teacher, "data": rt.data.fingerprint}, run)


class TeacherOutputs:
    """Lookup of cached teacher outputs by (image index, view); refuses a cache whose views no longer
    render as they did when it was made."""

    def __init__(self, stage: Done[TeacherCache], views):
        if views.digest() != stage.result.views_digest:
            raise FactoryError(
                f"teacher cache {stage.path}: its view seeds no longer render the views the teacher saw (another "
                f"torchvision, Pillow or image files?); delete that folder or rerun with --force")
        self.views = stage.result.views
        self.features = np.load(stage.file("features.npy"), mmap_mode="r")
        self.logits = np.load(stage.file("logits.npy"), mmap_mode="r")

    def __call__(self, indices: torch.Tensor, views: torch.Tensor, device: torch.device):
        rows = (indices * self.views + views).numpy()
        # Copied into torch's own (64-byte aligned) memory: a NumPy array's address modulo 64 depends on the
        # process's heap history, and oneMKL's kernels on Intel CPUs round differently by alignment, so a
        # resumed run would compute other gradients than the uninterrupted one from the same numbers.
        f = torch.tensor(self.features[rows], dtype=torch.float32, device=device)
        z = torch.tensor(self.logits[rows], dtype=torch.float32, device=device)
        return f, z


class _ViewPairs(torch.utils.data.Dataset):
    def __init__(self, views, pairs):
        self.views, self.pairs = views, pairs

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, j):
        return self.views.render(*self.pairs[j])
