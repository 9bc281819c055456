"""Distillation: a randomly initialised student learns from the teacher (no pre-training of its own)."""

from __future__ import annotations

from pathlib import Path

import torch

from factory import distributed as dist
from factory.cache import StageOutput
from factory.context import BuildContext
from factory.data import Preprocess, preprocess_for
from factory.losses import DistillLoss
from factory.models import count_params, create_model, load_trained, pooled_and_logits, save_trained
from factory.stages.teacher import TeacherOutputs
from factory.train import autocast, train_loop


def student_preprocess(model: torch.nn.Module, ctx: BuildContext) -> Preprocess:
    return preprocess_for(model, ctx.view_size)


class DistillObjective(torch.nn.Module):
    """Student + projection heads (trained, checkpointed, DDP-wrapped); the teacher is a plain callable
    held outside the module tree, so it is neither trained, saved nor wrapped."""

    def __init__(self, student: torch.nn.Module, preprocess: Preprocess, loss: DistillLoss, teacher_fn):
        super().__init__()
        self.student = student
        self.preprocess = preprocess
        self.loss = loss
        self._teacher_fn = teacher_fn

    def forward(self, images, labels, indices, views):
        t_feat, t_logits = self._teacher_fn(images, indices, views)
        with autocast(images.device):
            s_feat, s_logits = pooled_and_logits(self.student, self.preprocess(images))
        total, parts = self.loss(s_feat, s_logits, t_feat, t_logits, labels)
        return total, parts


def cached_teacher(stage: StageOutput, device: torch.device):
    """Teacher outputs looked up in the teacher cache by (image, view)."""
    outputs = TeacherOutputs(stage)
    return lambda images, indices, views: outputs(indices, views, device)


def online_teacher(stage: StageOutput, device: torch.device):
    """The teacher a stage trained, run on every batch."""
    return frozen_teacher(*load_trained(stage), device)


def frozen_teacher(model: torch.nn.Module, preprocess: Preprocess, device: torch.device):
    """``(images, indices, views) -> (features, logits)`` of a frozen teacher (inference mode, autocast,
    channels_last on CUDA)."""
    model.to(device).eval().requires_grad_(False)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)

    def forward(images, indices, views):
        with torch.inference_mode(), autocast(device):
            f, z = pooled_and_logits(model, preprocess(images))
        return f.float().clone(), z.float().clone()

    return forward


def distill_student(ctx: BuildContext, teacher: StageOutput, teacher_cache: StageOutput | None) -> StageOutput:
    """Train the student from scratch with CE + KD + alignment/uniformity against the teacher."""
    d = ctx.recipe.distill

    def run(work: Path) -> dict:
        torch.manual_seed(d.seed)
        student = create_model(ctx.recipe.student.model, None, ctx.data.num_classes)
        s_pre = student_preprocess(student, ctx)
        loss = DistillLoss(student.num_features, teacher.info["feature_dim"], d.weights, d.temperature,
                           d.proj_dim, d.proj_hidden)
        if teacher_cache is not None:
            teacher_fn = cached_teacher(teacher_cache, ctx.device)
            views = ctx.train_views(seed=d.seed, num_views=d.teacher_views)
        else:
            teacher_fn = online_teacher(teacher, ctx.device)
            views = ctx.train_views(seed=d.seed)
        objective = DistillObjective(student, s_pre, loss, teacher_fn)
        result = train_loop(objective, [{"params": list(objective.parameters()), "lr": d.lr}], views,
                            ctx.settings(d.epochs, d.batch_size), ctx.device, work, "distill",
                            ctx.val_accuracy_fn(student, s_pre))
        if not dist.is_main():
            return {}
        save_trained(student, s_pre, ctx.data.classes, work / "model")
        return {"model": ctx.recipe.student.model, "preprocess": s_pre.to_dict(), "params": count_params(student),
                "teacher_mode": "cached" if teacher_cache is not None else "online",
                "history": result.history, "flops": result.flops, "resumed_wall_s": result.resumed_wall_s}

    config = d.model_dump(mode="json") | {"student": ctx.recipe.student.model, "view_size": ctx.view_size}
    inputs = {"teacher": teacher, "data": ctx.data.fingerprint}
    if teacher_cache is not None:
        inputs["teacher_cache"] = teacher_cache
    return ctx.cache.run("distill", config, inputs, run, distributed=True)
