"""One training loop for every stage (teacher adaptation, distillation, baselines, pre-training; the stage
skeleton around it is :mod:`factory.train_stage`, its resume file :mod:`factory.checkpoint`, evaluation
:mod:`factory.evaluate`).

The loop is resumable: it checkpoints (weights, optimizer, the global random generators, history, wall
time so far) into the stage's work folder at an epoch's end once ``CHECKPOINT_EVERY_S`` seconds have
passed since the last checkpoint, and when training ends; a rerun after an interruption continues from
there. Shuffling and views are seeded per epoch, so a resumed run sees the same data as an
uninterrupted one, and it trains to the same weights (``tests/test_resume.py``). It also
accounts compute: FLOPs of one optimisation step are counted with ``torch.utils.flop_counter`` on the
first batch and scaled by the number of images processed. Norms and biases get no weight decay
(timm's ``param_groups_weight_decay``).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.flop_counter import FlopCounterMode

from factory import distributed as dist
from factory.checkpoint import Checkpoint, Progress
from factory.stage import Plan, RESUME_FILE, StageResult
from factory.console import progress_bar
from factory.data import DeviceViews, Preprocess, TrainViews

CHECKPOINT_EVERY_S = float(os.environ.get("FACTORY_CHECKPOINT_EVERY_S", "60"))
SHOW_LOSS_EVERY = 20


@dataclass(frozen=True)
class ComputeBudget(Plan):
    """A compute budget: wall-clock seconds (all attempts together) and FLOPs of the training step (teacher
    forward passes included); training stops when the first is spent."""

    seconds: float | None
    flops: float | None

    @classmethod
    def of(cls, seconds: float | None, flops: float | None) -> ComputeBudget | None:
        """The budget of ``seconds`` and ``flops``; None when neither is set (``epochs`` alone)."""
        return cls(seconds, flops) if seconds or flops else None

    def fraction(self, elapsed: float, flops: float) -> float:
        """The larger share of its two budgets spent."""
        return max(elapsed / self.seconds if self.seconds else 0.0, flops / self.flops if self.flops else 0.0)

    def spent(self, elapsed: float, flops: float) -> str | None:
        """Which of its budgets is spent ('seconds', 'flops'), or None."""
        if self.seconds and elapsed >= self.seconds:
            return "seconds"
        return "flops" if self.flops and flops >= self.flops else None


@dataclass(frozen=True)
class TrainSettings(Plan):
    """How a model trains (part of a training stage's plan)."""

    epochs: int
    batch_size: int
    weight_decay: float
    warmup_epochs: float
    """Linear warmup of the learning rate, then cosine decay to the last epoch."""
    seed: int
    budget: ComputeBudget | None = None
    """None: ``epochs`` alone; else ``epochs`` is an upper bound."""

    @property
    def budgeted(self) -> bool:
        return self.budget is not None

    def progress(self, step: int, total_steps: int, warmup_steps: int, elapsed: float, flops: float) -> float:
        """Fraction of the budget spent, 0..1; the learning-rate schedule follows it and training stops at 1."""
        epochs = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return max(epochs, self.budget.fraction(elapsed, flops)) if self.budget else epochs


@dataclass
class TrainResult:
    history: list[dict]
    wall_s: float
    resumed_wall_s: float
    flops: float
    stopped_by: str = "epochs"
    views_seen: str = ""
    """Digest of the (epoch, image, view) sequence trained on: equal digests mean equal training data."""


@dataclass(kw_only=True)
class TrainedModel(StageResult):
    """Result of a stage that trains a classifier and saves it under ``model/``."""

    model: str
    weights: str
    preprocess: Preprocess
    params: int
    feature_dim: int
    history: list[dict] = field(default_factory=list)
    views_seen: str = ""


def autocast(device: torch.device):
    """bf16 autocast on CUDA, a no-op on CPU (where fp32 is faster for these convnets)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def to_device(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` on ``device``, channels_last on CUDA (where cuDNN runs these convnets faster that way)."""
    module.to(device)
    if device.type == "cuda":
        module.to(memory_format=torch.channels_last)
    return module


def param_groups(module: nn.Module, weight_decay: float, lr: float,
                 lr_of: dict[int, float] | None = None) -> list[dict]:
    """AdamW parameter groups of ``module``'s trainable parameters: no weight decay on norms and biases
    (timm's ``param_groups_weight_decay``), learning rate ``lr`` or ``lr_of[id(param)]``."""
    from timm.optim import param_groups_weight_decay

    groups = []
    for group in param_groups_weight_decay(module, weight_decay):
        by_lr: dict[float, list] = defaultdict(list)
        for p in group["params"]:
            by_lr[(lr_of or {}).get(id(p), lr)].append(p)
        groups += [{"params": ps, "weight_decay": group["weight_decay"], "lr": rate} for rate, ps in by_lr.items()]
    return groups


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



def _epoch_loader(dataset: TrainViews | DeviceViews, settings: TrainSettings, epoch: int, drop_last: bool,
                  num_workers: int, device: torch.device):
    """This epoch's batches: seeded shuffling (sharded by rank under DDP), this epoch's views."""
    dataset.set_epoch(epoch)
    if isinstance(dataset, DeviceViews):
        return dataset.batches(settings.batch_size, drop_last, dist.rank(), dist.world_size())
    if dist.world_size() > 1:
        sampler = DistributedSampler(dataset, dist.world_size(), dist.rank(), shuffle=True, seed=settings.seed,
                                     drop_last=True)
        sampler.set_epoch(epoch)
        order = {"sampler": sampler}
    else:
        order = {"shuffle": True, "generator": torch.Generator().manual_seed(settings.seed * 1000 + epoch)}
    return DataLoader(dataset, batch_size=settings.batch_size, drop_last=drop_last, num_workers=num_workers,
                      pin_memory=device.type == "cuda", **order)


def _seen(digest: str, epoch: int, indices: torch.Tensor, views: torch.Tensor) -> str:
    """Chain the batch's (image, view) pairs into the running digest of training data seen."""
    chunk = f"{epoch}:" + ",".join(f"{i}/{v}" for i, v in zip(indices.tolist(), views.tolist()))
    return hashlib.sha256(f"{digest}|{chunk}".encode()).hexdigest()[:20]


def train_loop(
    objective: nn.Module,
    groups: list[dict],
    dataset: TrainViews | DeviceViews,
    settings: TrainSettings,
    device: torch.device,
    work_dir: Path,
    desc: str,
    evaluate: Callable[[], float] | None = None,
    num_workers: int = 0,
) -> TrainResult:
    """Train ``objective`` (a module whose ``forward(images_uint8, labels, indices, views)`` returns
    ``(loss, parts)``; all its parameters are checkpointed) with AdamW over ``groups`` (see
    :func:`param_groups`) and a warmup-cosine schedule that follows the budget's progress.

    Under a multi-process launch the objective is wrapped in DDP and every process trains on its
    shard of each epoch (``settings.batch_size`` per process); anything the objective calls but does
    not own as a submodule, like a frozen teacher, stays out of the DDP wrapper. ``evaluate``
    (optional) returns validation accuracy after each epoch.
    """
    optimizer = torch.optim.AdamW(groups)
    for group in optimizer.param_groups:
        group["base_lr"] = group["lr"]
    run = _Run(settings, _Schedule.of(len(dataset), settings), device, desc)
    # device and memory format before a resume file loads: the optimizer's state follows its parameters
    to_device(objective, device).train()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    checkpoint = Checkpoint(work_dir / RESUME_FILE, objective, optimizer, CHECKPOINT_EVERY_S)
    state = checkpoint.load()
    run.resumed_wall_s = state.wall_s
    model = objective
    if dist.world_size() > 1:
        model = DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)
    run.started = time.perf_counter()
    with progress_bar(disable=not dist.is_main()) as bar:
        run.show = _progress_task(bar, desc, settings, run.schedule, state.epoch)
        for epoch in range(state.epoch, settings.epochs):
            if state.stopped_by is not None:
                break
            loader = _epoch_loader(dataset, settings, epoch, run.schedule.drop_last, num_workers, device)
            record = _train_epoch(model, optimizer, loader, epoch, state, run)
            if record is None:  # the budget ran out at an epoch boundary
                break
            if evaluate is not None:
                record["val_accuracy"] = evaluate()
                objective.train()
            state.history.append(record)
            state.epoch = epoch + 1
            state.wall_s = run.elapsed()
            checkpoint.save(state)
    state.wall_s = run.elapsed()
    objective.to(memory_format=torch.contiguous_format)
    checkpoint.save(state, final=True)
    return TrainResult(state.history, time.perf_counter() - run.started, run.resumed_wall_s,
                       (state.flops_per_image or 0.0) * state.images_seen * dist.world_size(),
                       state.stopped_by or "epochs", state.views_seen)


@dataclass(frozen=True)
class _Schedule:
    """Steps of a run: per epoch (of this process's shard), in all, of warmup; whether the last batch drops."""

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    drop_last: bool

    @classmethod
    def of(cls, images: int, settings: TrainSettings) -> _Schedule:
        shard = images // dist.world_size()
        drop_last = shard > settings.batch_size  # no tiny last batch (BatchNorm, uniformity pairs)
        per_epoch = shard // settings.batch_size if drop_last else 1
        return cls(per_epoch, per_epoch * settings.epochs, int(settings.warmup_epochs * per_epoch), drop_last)


@dataclass
class _Run:
    """A run's fixed settings and clock, and how it shows progress."""

    settings: TrainSettings
    schedule: _Schedule
    device: torch.device
    desc: str
    started: float = 0.0
    resumed_wall_s: float = 0.0
    show: Callable[..., None] = lambda **_: None

    def elapsed(self) -> float:
        """Wall time of the run, attempts before a resume included."""
        return self.resumed_wall_s + time.perf_counter() - self.started


def _progress_task(bar, desc: str, settings: TrainSettings, schedule: _Schedule, epoch: int) -> Callable[..., None]:
    """A progress line over the steps (or the budget's progress, per mille); returns its update function."""
    task = bar.add_task(desc, total=1000 if settings.budgeted else schedule.total_steps,
                        completed=0 if settings.budgeted else epoch * schedule.steps_per_epoch)
    return lambda **fields: bar.update(task, **fields)


def _train_epoch(model: nn.Module, optimizer, loader, epoch: int, state: Progress, run: _Run) -> dict | None:
    """One epoch of steps: the epoch's record, or None when the budget was spent before its first step."""
    settings, schedule, world = run.settings, run.schedule, dist.world_size()
    totals: dict[str, float] = defaultdict(float)
    n_batches, epoch_started = 0, time.perf_counter()
    for step_in_epoch, (images, labels, indices, views) in enumerate(loader):
        step = epoch * schedule.steps_per_epoch + step_in_epoch
        elapsed = run.elapsed()
        flops_spent = (state.flops_per_image or 0.0) * state.images_seen * world
        spent = settings.progress(step, schedule.total_steps, schedule.warmup_steps, elapsed, flops_spent)
        if settings.budgeted:
            state.stopped_by = _budget_stop(settings, elapsed, flops_spent, world)
            if state.stopped_by:
                break
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * _lr_factor(step, schedule.warmup_steps, spent)
        parts = _step(model, optimizer, images.to(run.device, non_blocking=True),
                      labels.to(run.device, non_blocking=True), indices, views, state)
        state.views_seen = _seen(state.views_seen, epoch, indices, views)
        for k, v in parts.items():
            totals[k] += v
        n_batches += 1
        completed = {"completed": int(1000 * min(1.0, spent))} if settings.budgeted else {"advance": 1}
        if step_in_epoch % SHOW_LOSS_EVERY == 0:  # reading the loss waits for the GPU: not every step
            label = f"{run.desc} epoch {epoch + 1}" + ("" if settings.budgeted else f"/{settings.epochs}")
            completed["description"] = f"{label} loss {float(parts['loss']):.3f}"
        run.show(**completed)
    if n_batches == 0:
        return None
    return {"epoch": epoch + 1, "steps": n_batches, "seconds": time.perf_counter() - epoch_started,
            **{k: float(v) / n_batches for k, v in totals.items()}}


def _step(model: nn.Module, optimizer, images: torch.Tensor, labels: torch.Tensor, indices, views,
          state: Progress) -> dict[str, torch.Tensor]:
    """One optimisation step; counts the FLOPs of the first one. Returns the loss and its parts (detached,
    on the device: converting them to numbers here would make the CPU wait for the GPU every step)."""
    if state.flops_per_image is None:
        with FlopCounterMode(display=False) as counter:
            loss, parts = model(images, labels, indices, views)
            loss.backward()
        state.flops_per_image = counter.get_total_flops() / len(images)
    else:
        loss, parts = model(images, labels, indices, views)
        loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    state.images_seen += len(images)
    return {"loss": loss.detach(), **{k: v.detach() for k, v in parts.items()}}


def _budget_stop(settings: TrainSettings, elapsed: float, flops: float, world: int) -> str | None:
    """Which budget is spent ('seconds', 'flops') or None; every process agrees under DDP."""
    reason = settings.budget.spent(elapsed, flops) if settings.budget else None
    if world > 1:  # wall clocks differ between processes: stop together or the next all-reduce hangs
        flag = torch.tensor([{None: 0, "seconds": 1, "flops": 2}[reason]], device=dist.state().device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        reason = {0: None, 1: "seconds", 2: "flops"}[int(flag.item())]
    return reason
