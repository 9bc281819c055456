"""Teacher stages: fit the teacher to the task, then cache its outputs on K seeded views per image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from factory import distributed as dist
from factory.cache import StageOutput, write_json
from factory.console import progress_bar
from factory.context import BuildContext
from factory.data import Preprocess, preprocess_for
from factory.models import (count_params, create_model, describe_weights, load_trained, pooled_and_logits,
                            save_trained, weights_fingerprint)
from factory.train import accuracy, autocast, fit_classifier, forward_flops_per_image


def teacher_preprocess(model: torch.nn.Module, ctx: BuildContext) -> Preprocess:
    """The teacher's own mean and std (its pretrained config); resolution from ``teacher.image_size``,
    else its pretrained one, else (trained from scratch) the task's."""
    cfg = ctx.recipe.teacher
    return preprocess_for(model, cfg.image_size or (None if cfg.weights else ctx.view_size))


def adapt_teacher(ctx: BuildContext) -> StageOutput:
    """Build the teacher from its weights and adapt it to the task (scratch, linear probe or finetune)."""
    cfg = ctx.recipe.teacher

    def run(work: Path) -> dict:
        torch.manual_seed(cfg.seed)
        size = cfg.image_size or (None if cfg.weights else ctx.view_size)
        model = create_model(cfg.model, cfg.weights, ctx.data.num_classes, field="teacher.weights", image_size=size)
        preprocess = teacher_preprocess(model, ctx)
        head = list(model.get_classifier().parameters())
        head_ids = {id(p) for p in head}
        body = [p for p in model.parameters() if id(p) not in head_ids]
        if cfg.adapt == "linear_probe":
            for p in body:
                p.requires_grad_(False)
            groups = [{"params": head, "lr": cfg.lr}]
        elif cfg.adapt == "finetune":
            groups = [{"params": body, "lr": cfg.lr * cfg.body_lr_scale}, {"params": head, "lr": cfg.lr}]
        else:
            groups = [{"params": list(model.parameters()), "lr": cfg.lr}]
        result = fit_classifier(
            model, preprocess, groups, ctx.train_views(seed=cfg.seed + 101),
            ctx.settings(cfg.epochs, cfg.batch_size, seed=cfg.seed), ctx.device, work,
            f"teacher ({cfg.adapt})", ctx.val_accuracy_fn(model, preprocess),
        )
        if not dist.is_main():
            return {}
        model.requires_grad_(True)
        save_trained(model, preprocess, ctx.data.classes, work / "model")
        test_acc = accuracy(model, preprocess, ctx.eval_images("test", preprocess.size), ctx.device)
        return {
            "model": cfg.model, "weights": describe_weights(cfg.model, cfg.weights), "adapt": cfg.adapt,
            "preprocess": preprocess.to_dict(), "params": count_params(model), "feature_dim": model.num_features, "test_accuracy": test_acc,
            "history": result.history, "flops": result.flops, "resumed_wall_s": result.resumed_wall_s,
            "forward_flops_per_image": forward_flops_per_image(model.to(ctx.device), preprocess.size),
        }

    return ctx.cache.run("teacher", cfg.model_dump(mode="json", exclude={"pretrain_flops"}) | {"view_size": ctx.view_size},
                         {"data": ctx.data.fingerprint, "weights": weights_fingerprint(cfg.weights)}, run,
                         distributed=True)


def cache_teacher_outputs(ctx: BuildContext, teacher: StageOutput) -> StageOutput | None:
    """Pooled features and logits of the teacher on ``distill.teacher_views`` seeded views of every image.

    Stored as float16 ``.npy`` arrays of shape (images, views, dim), memory-mapped at training time.
    Returns None when the recipe asks for an online teacher (``teacher_views: 0``).
    """
    d = ctx.recipe.distill
    if d.teacher_views == 0:
        return None

    def run(work: Path) -> dict:
        model, preprocess = load_trained(teacher)
        model.to(ctx.device)
        if ctx.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        views = ctx.train_views(seed=d.seed, num_views=d.teacher_views)
        n, k = len(views), d.teacher_views
        pairs = [(i, v) for i in range(n) for v in range(k)]
        feats = logits = None
        loader = DataLoader(_ViewPairs(views, pairs), batch_size=128, num_workers=ctx.recipe.data.num_workers)
        done = 0
        with torch.inference_mode(), progress_bar() as bar:
            task = bar.add_task(f"teacher cache ({k} views x {n} images)", total=len(pairs))
            for images in loader:
                with autocast(ctx.device):
                    f, z = pooled_and_logits(model, preprocess(images.to(ctx.device)))
                if feats is None:
                    feats = np.lib.format.open_memmap(work / "features.npy", "w+", np.float16, (n * k, f.shape[1]))
                    logits = np.lib.format.open_memmap(work / "logits.npy", "w+", np.float16, (n * k, z.shape[1]))
                feats[done:done + len(f)] = f.float().cpu().numpy()
                logits[done:done + len(z)] = z.float().cpu().numpy()
                done += len(f)
                bar.update(task, advance=len(f))
        feats.flush()
        logits.flush()
        write_json(work / "views.json", {"images": n, "views": k, "seed": d.seed, "view_size": ctx.view_size})
        return {"images": n, "views": k, "feature_dim": int(feats.shape[1]),
                "flops": teacher.info["forward_flops_per_image"] * n * k}

    return ctx.cache.run("teacher_cache", {"views": d.teacher_views, "seed": d.seed, "view_size": ctx.view_size},
                         {"teacher": teacher, "data": ctx.data.fingerprint}, run)


class TeacherOutputs:
    """Lookup of cached teacher outputs by (image index, view)."""

    def __init__(self, stage: StageOutput):
        meta = json.loads(stage.file("views.json").read_text())
        self.views = meta["views"]
        self.features = np.load(stage.file("features.npy"), mmap_mode="r")
        self.logits = np.load(stage.file("logits.npy"), mmap_mode="r")

    def __call__(self, indices: torch.Tensor, views: torch.Tensor, device: torch.device):
        rows = (indices * self.views + views).numpy()
        f = torch.from_numpy(np.asarray(self.features[rows], dtype=np.float32)).to(device)
        z = torch.from_numpy(np.asarray(self.logits[rows], dtype=np.float32)).to(device)
        return f, z


class _ViewPairs(torch.utils.data.Dataset):
    def __init__(self, views, pairs):
        self.views, self.pairs = views, pairs

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, j):
        return self.views.render(*self.pairs[j])
