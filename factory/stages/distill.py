"""Distillation: a randomly initialised student learns from the teacher (no pre-training of its own)."""

from __future__ import annotations

from pathlib import Path

import torch

from factory.cache import StageOutput
from factory.context import BuildContext
from factory.data import Preprocess, preprocess_for
from factory.losses import DistillLoss
from factory.models import count_params, create_model, load_trained, pooled_and_logits, save_trained
from factory.stages.teacher import TeacherOutputs
from factory.train import autocast, train_loop


def student_preprocess(model: torch.nn.Module, ctx: BuildContext) -> Preprocess:
    return preprocess_for(model, ctx.view_size)


def distill_student(ctx: BuildContext, teacher: StageOutput, teacher_cache: StageOutput | None) -> StageOutput:
    """Train the student from scratch with CE + KD + alignment/uniformity against the teacher."""
    d = ctx.recipe.distill

    def run(work: Path) -> dict:
        torch.manual_seed(d.seed)
        student = create_model(ctx.recipe.student.model, None, ctx.data.num_classes)
        s_pre = student_preprocess(student, ctx)
        loss_fn = DistillLoss(student.num_features, teacher.info["feature_dim"],
                              d.weights, d.temperature, d.proj_dim, d.proj_hidden)
        trainable = torch.nn.ModuleDict({"student": student, "loss": loss_fn})
        trainable.to(ctx.device)
        if teacher_cache is not None:
            cached = TeacherOutputs(teacher_cache)
            views = ctx.train_views(seed=d.seed, num_views=d.teacher_views)

            def teacher_out(images, indices, view_ids):
                return cached(indices, view_ids, ctx.device)
        else:
            t_model, t_pre = load_trained(teacher)
            t_model.to(ctx.device).eval().requires_grad_(False)
            if ctx.device.type == "cuda":
                t_model = t_model.to(memory_format=torch.channels_last)
            views = ctx.train_views(seed=d.seed)

            def teacher_out(images, indices, view_ids):
                with torch.inference_mode(), autocast(ctx.device):
                    f, z = pooled_and_logits(t_model, t_pre(images))
                return f.float().clone(), z.float().clone()

        def step(images, labels, indices, view_ids):
            t_feat, t_logits = teacher_out(images, indices, view_ids)
            with autocast(ctx.device):
                s_feat, s_logits = pooled_and_logits(student, s_pre(images))
            return loss_fn(s_feat, s_logits, t_feat, t_logits, labels)

        result = train_loop(trainable, [{"params": list(trainable.parameters()), "lr": d.lr}], step, views,
                            ctx.settings(d.epochs, d.batch_size), ctx.device, work, "distill",
                            ctx.val_accuracy_fn(student, s_pre))
        save_trained(student, s_pre, ctx.data.classes, work / "model")
        return {"model": ctx.recipe.student.model, "preprocess": s_pre.to_dict(), "params": count_params(student),
                "teacher_mode": "cached" if teacher_cache is not None else "online",
                "history": result.history, "flops": result.flops, "resumed_wall_s": result.resumed_wall_s}

    config = d.model_dump(mode="json") | {"student": ctx.recipe.student.model, "view_size": ctx.view_size}
    inputs = {"teacher": teacher, "data": ctx.data.fingerprint}
    if teacher_cache is not None:
        inputs["teacher_cache"] = teacher_cache
    return ctx.cache.run("distill", config, inputs, run)

