"""One training loop for every stage (teacher adaptation, distillation, baselines), and evaluation.

The loop is resumable: after each epoch it writes ``resume.pt`` (weights, optimizer, history, wall
time so far) into the stage's work folder, and a rerun after an interruption continues from there.
Shuffling and views are seeded per epoch, so a resumed run sees the same data as an uninterrupted one.
It also accounts compute: FLOPs of one optimisation step are counted with
``torch.utils.flop_counter`` on the first batch and scaled by the number of images processed.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torch.utils.flop_counter import FlopCounterMode

from factory import distributed as dist
from factory.console import progress_bar
from factory.data import Preprocess, TrainViews

@dataclass
class TrainSettings:
    epochs: int
    batch_size: int
    weight_decay: float
    warmup_epochs: float
    seed: int
    num_workers: int = 0
    max_seconds: float | None = None
    """Compute budget in wall-clock seconds (all attempts together); ``epochs`` is then an upper bound."""
    max_flops: float | None = None
    """Compute budget in FLOPs of the training step, teacher forward passes included."""

    def progress(self, step: int, total_steps: int, warmup_steps: int, elapsed: float, flops: float) -> float:
        """Fraction of the budget spent, 0..1; the learning-rate schedule follows it and training stops at 1."""
        fractions = [(step - warmup_steps) / max(1, total_steps - warmup_steps)]
        if self.max_seconds:
            fractions.append(elapsed / self.max_seconds)
        if self.max_flops:
            fractions.append(flops / self.max_flops)
        return max(fractions)


@dataclass
class TrainResult:
    history: list[dict]
    wall_s: float
    resumed_wall_s: float
    flops: float
    stopped_by: str = "epochs"


def autocast(device: torch.device):
    """bf16 autocast on CUDA, a no-op on CPU (where fp32 is faster for these convnets)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _lr_factor(step: int, warmup: int, progress: float) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay over the budget's progress."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))


class ClassifierObjective(nn.Module):
    """Cross-entropy of a classifier on preprocessed views (teacher adaptation, baselines)."""

    def __init__(self, model: nn.Module, preprocess: Preprocess):
        super().__init__()
        self.model = model
        self.preprocess = preprocess

    def forward(self, images, labels, indices, views):
        with autocast(images.device):
            logits = self.model(self.preprocess(images))
        loss = F.cross_entropy(logits.float(), labels)
        return loss, {"ce": loss.detach()}


def train_loop(
    objective: nn.Module,
    param_groups: list[dict],
    dataset: TrainViews,
    settings: TrainSettings,
    device: torch.device,
    work_dir: Path,
    desc: str,
    evaluate: Callable[[], float] | None = None,
) -> TrainResult:
    """Train ``objective`` (a module whose ``forward(images_uint8, labels, indices, views)`` returns
    ``(loss, parts)``; all its parameters are checkpointed) with AdamW and a warmup-cosine schedule.

    Under a multi-process launch the objective is wrapped in DDP and every process trains on its
    shard of each epoch (``settings.batch_size`` per process); anything the objective calls but does
    not own as a submodule, like a frozen teacher, stays out of the DDP wrapper. ``evaluate``
    (optional) returns validation accuracy after each epoch.
    """
    optimizer = torch.optim.AdamW(param_groups, weight_decay=settings.weight_decay)
    for group in optimizer.param_groups:
        group["base_lr"] = group["lr"]
    world = dist.world_size()
    shard = len(dataset) // world
    drop_last = shard > settings.batch_size  # no tiny last batch (BatchNorm, uniformity pairs)
    steps_per_epoch = shard // settings.batch_size if drop_last else 1
    total_steps = steps_per_epoch * settings.epochs
    warmup_steps = int(settings.warmup_epochs * steps_per_epoch)

    resume_path = work_dir / "resume.pt"
    history: list[dict] = []
    start_epoch, resumed_wall_s, flops_per_image, images_seen, stopped_by = 0, 0.0, None, 0, None
    if resume_path.is_file():
        ckpt = torch.load(resume_path, map_location="cpu", weights_only=False)
        objective.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch, history = ckpt["epoch"], ckpt["history"]
        resumed_wall_s, flops_per_image = ckpt["wall_s"], ckpt["flops_per_image"]
        images_seen, stopped_by = ckpt.get("images_seen", 0), ckpt.get("stopped_by")

    objective.to(device).train()
    model = objective
    if world > 1:
        model = DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)
    started = time.perf_counter()
    budgeted = bool(settings.max_seconds or settings.max_flops)
    with progress_bar(disable=not dist.is_main()) as bar:
        task = bar.add_task(desc, total=1000 if budgeted else total_steps,
                            completed=0 if budgeted else start_epoch * steps_per_epoch)
        for epoch in range(start_epoch, settings.epochs):
            if stopped_by is not None:
                break
            dataset.set_epoch(epoch)
            if world > 1:
                sampler = DistributedSampler(dataset, world, dist.rank(), shuffle=True, seed=settings.seed, drop_last=True)
                sampler.set_epoch(epoch)
                order = {"sampler": sampler}
            else:
                order = {"shuffle": True, "generator": torch.Generator().manual_seed(settings.seed * 1000 + epoch)}
            loader = DataLoader(dataset, batch_size=settings.batch_size, drop_last=drop_last,
                                num_workers=settings.num_workers, pin_memory=device.type == "cuda", **order)
            totals: dict[str, float] = {}
            n_batches = 0
            epoch_started = time.perf_counter()
            for step_in_epoch, (images, labels, indices, views) in enumerate(loader):
                step = epoch * steps_per_epoch + step_in_epoch
                elapsed = resumed_wall_s + time.perf_counter() - started
                flops_spent = (flops_per_image or 0.0) * images_seen * world
                spent = settings.progress(step, total_steps, warmup_steps, elapsed, flops_spent)
                if budgeted:
                    stopped_by = _budget_stop(settings, elapsed, flops_spent, world)
                    if stopped_by:
                        break
                for group in optimizer.param_groups:
                    group["lr"] = group["base_lr"] * _lr_factor(step, warmup_steps, spent)
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                if flops_per_image is None:
                    with FlopCounterMode(display=False) as counter:
                        loss, parts = model(images, labels, indices, views)
                        loss.backward()
                    flops_per_image = counter.get_total_flops() / len(images)
                else:
                    loss, parts = model(images, labels, indices, views)
                    loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                images_seen += len(images)
                parts = {"loss": float(loss.detach()), **{k: float(v) for k, v in parts.items()}}
                for k, v in parts.items():
                    totals[k] = totals.get(k, 0.0) + v
                n_batches += 1
                label = f"{desc} epoch {epoch + 1}" + ("" if budgeted else f"/{settings.epochs}")
                if budgeted:
                    bar.update(task, completed=int(1000 * min(1.0, spent)), description=f"{label} loss {parts['loss']:.3f}")
                else:
                    bar.update(task, advance=1, description=f"{label} loss {parts['loss']:.3f}")
            if n_batches == 0:  # the budget ran out at an epoch boundary
                break
            record = {"epoch": epoch + 1, "steps": n_batches, "seconds": time.perf_counter() - epoch_started,
                      **{k: v / max(1, n_batches) for k, v in totals.items()}}
            if evaluate is not None:
                record["val_accuracy"] = evaluate()
                objective.train()
            history.append(record)
            if dist.is_main():
                _save_resume(resume_path, objective, optimizer, epoch + 1, history,
                             resumed_wall_s + time.perf_counter() - started, flops_per_image, images_seen, stopped_by)
    if stopped_by and dist.is_main():
        _save_resume(resume_path, objective, optimizer, len(history), history,
                     resumed_wall_s + time.perf_counter() - started, flops_per_image, images_seen, stopped_by)
    wall_s = time.perf_counter() - started
    return TrainResult(history, wall_s, resumed_wall_s, (flops_per_image or 0.0) * images_seen * world,
                       stopped_by or "epochs")


def _budget_stop(settings: TrainSettings, elapsed: float, flops: float, world: int) -> str | None:
    """Which budget is spent ('seconds', 'flops') or None; every process agrees under DDP."""
    reason = None
    if settings.max_seconds and elapsed >= settings.max_seconds:
        reason = "seconds"
    elif settings.max_flops and flops >= settings.max_flops:
        reason = "flops"
    if world > 1:  # wall clocks differ between processes: stop together or the next all-reduce hangs
        flag = torch.tensor([{None: 0, "seconds": 1, "flops": 2}[reason]], device=dist.state().device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        reason = {0: None, 1: "seconds", 2: "flops"}[int(flag.item())]
    return reason


def _save_resume(path: Path, module: nn.Module, optimizer, epoch: int, history: list[dict], wall_s: float,
                 flops_per_image: float | None, images_seen: int, stopped_by: str | None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": module.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                "history": history, "wall_s": wall_s, "flops_per_image": flops_per_image,
                "images_seen": images_seen, "stopped_by": stopped_by}, tmp)
    os.replace(tmp, path)


@torch.inference_mode()
def predict(model: nn.Module, preprocess: Preprocess, dataset: Dataset, device: torch.device,
            batch_size: int = 128, desc: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of ``model`` over an :class:`~factory.data.EvalImages` dataset."""
    model.to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    logits, labels = [], []
    with progress_bar(transient=True) as bar:
        task = bar.add_task(desc or "predict", total=len(loader), visible=desc is not None)
        for images, y in loader:
            with autocast(device):
                logits.append(model(preprocess(images.to(device))).float().cpu())
            labels.append(y)
            bar.update(task, advance=1)
    return torch.cat(logits), torch.cat(labels)


def accuracy(model: nn.Module, preprocess: Preprocess, dataset: Dataset, device: torch.device) -> float:
    logits, labels = predict(model, preprocess, dataset, device)
    return float((logits.argmax(1) == labels).float().mean())


def forward_flops_per_image(model: nn.Module, size: int) -> float:
    """FLOPs of one forward pass on one image (torch.utils.flop_counter; a MAC counts as 2 FLOPs)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size, device=device))
    model.train(was_training)
    return float(counter.get_total_flops())


def fit_classifier(
    model: nn.Module,
    preprocess: Preprocess,
    param_groups: list[dict],
    dataset: TrainViews,
    settings: TrainSettings,
    device: torch.device,
    work_dir: Path,
    desc: str,
    evaluate: Callable[[], float] | None = None,
) -> TrainResult:
    """Supervised training with cross-entropy (teacher adaptation and the baselines)."""
    return train_loop(ClassifierObjective(model, preprocess), param_groups, dataset, settings, device, work_dir,
                      desc, evaluate)
