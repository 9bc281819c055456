"""Comparisons trained with the same data, epochs and augmentations as the distilled student:
the student from scratch (CE only) and the student pre-trained then finetuned."""

from __future__ import annotations

from pathlib import Path

import torch

from factory import distributed as dist
from factory.cache import StageOutput
from factory.context import BuildContext
from factory.errors import HubUnreachableError
from factory.models import count_params, create_model, describe_weights, save_trained, weights_fingerprint
from factory.stages.distill import student_preprocess
from factory.train import fit_classifier


def train_student_baseline(ctx: BuildContext, kind: str) -> StageOutput:
    """``kind`` 'scratch' (random init) or 'finetune' (``baseline.weights``), trained with CE only.

    Raises :class:`HubUnreachableError` when the finetune baseline's weights cannot be fetched.
    """
    d, b = ctx.recipe.distill, ctx.recipe.baseline
    weights = None if kind == "scratch" else b.weights
    lr = d.lr if kind == "scratch" else (b.lr or d.lr)

    def run(work: Path) -> dict:
        torch.manual_seed(d.seed)
        model = create_model(ctx.recipe.student.model, weights, ctx.data.num_classes, field="baseline.weights")
        preprocess = student_preprocess(model, ctx)
        result = fit_classifier(model, preprocess, [{"params": list(model.parameters()), "lr": lr}],
                                ctx.train_views(seed=d.seed), ctx.settings(d.epochs, d.batch_size), ctx.device,
                                work, f"baseline ({kind})", ctx.val_accuracy_fn(model, preprocess))
        if not dist.is_main():
            return {}
        save_trained(model, preprocess, ctx.data.classes, work / "model")
        return {"model": ctx.recipe.student.model, "weights": describe_weights(ctx.recipe.student.model, weights),
                "preprocess": preprocess.to_dict(), "params": count_params(model), "history": result.history,
                "flops": result.flops, "resumed_wall_s": result.resumed_wall_s}

    config = {"kind": kind, "weights": weights, "lr": lr, "student": ctx.recipe.student.model,
              "epochs": d.epochs, "batch_size": d.batch_size, "weight_decay": d.weight_decay,
              "warmup_epochs": d.warmup_epochs, "seed": d.seed, "view_size": ctx.view_size}
    return ctx.cache.run(f"baseline_{kind}", config, {"data": ctx.data.fingerprint, "weights": weights_fingerprint(weights)},
                         run, distributed=True)


def try_finetune_baseline(ctx: BuildContext) -> tuple[StageOutput | None, str | None]:
    """The pretrain-then-finetune baseline, or ``(None, reason)`` when its weights are unreachable."""
    b = ctx.recipe.baseline
    if not b.pretrained:
        return None, "pretrain-then-finetune baseline disabled in the recipe (baseline.pretrained: false)"
    if b.weights is None:
        return None, "baseline.weights is null: no pretrained student weights to finetune"
    try:
        return train_student_baseline(ctx, "finetune"), None
    except HubUnreachableError as err:
        return None, f"pretrain-then-finetune baseline skipped: {err}"
