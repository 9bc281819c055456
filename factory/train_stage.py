"""The skeleton every training stage shares (teacher adaptation, distillation, the baselines, pre-training).

A stage supplies what it trains (:class:`Trainee`: its model, objective, parameter groups and views, built
after the seed is set); :func:`train_stage` seeds, builds, trains with resume, budget, progress and FLOPs
(:func:`factory.train.train_loop`), validates every epoch, and saves the model under ``model/`` on the main
process; :class:`Trained` gives the fields every training stage's result has.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from factory import distributed as dist
from factory.context import Runtime
from factory.data import DeviceViews, Preprocess, TrainViews
from factory.models import count_params, describe_weights, feature_dim, save_trained
from factory.train import TrainResult, TrainSettings, train_loop
from factory.evaluate import accuracy, forward_flops_per_image


@dataclass
class Trainee:
    """What a training stage trains."""

    model: nn.Module
    """The classifier saved under ``model/`` and validated every epoch."""
    preprocess: Preprocess
    objective: nn.Module
    """What the loop optimises: ``forward(images, labels, indices, views) -> (loss, parts)``."""
    groups: list[dict]
    """AdamW parameter groups (:func:`factory.train.param_groups`)."""
    views: TrainViews | DeviceViews
    weights: str | None = None
    """The checkpoint the model started from, as the plan names it (None: random init)."""


@dataclass
class Trained:
    """A finished training run on the main process: what was trained and how it went."""

    trainee: Trainee
    run: TrainResult

    def fields(self, name: str) -> dict:
        """The :class:`~factory.train.TrainedModel` fields of the stage's result, ``name`` its architecture."""
        model = self.trainee.model
        return dict(model=name, weights=describe_weights(name, self.trainee.weights),
                    preprocess=self.trainee.preprocess, params=count_params(model), feature_dim=feature_dim(model),
                    history=self.run.history, views_seen=self.run.views_seen, flops=self.run.flops,
                    resumed_wall_s=self.run.resumed_wall_s)

    def test_accuracy(self, rt: Runtime) -> float:
        preprocess = self.trainee.preprocess
        return accuracy(self.trainee.model, preprocess, rt.eval_images("test", preprocess), rt.device)

    def forward_flops_per_image(self, rt: Runtime) -> float:
        return forward_flops_per_image(self.trainee.model.to(rt.device), self.trainee.preprocess.size)


def train_stage(rt: Runtime, settings: TrainSettings, work: Path, desc: str,
                build: Callable[[], Trainee]) -> Trained | None:
    """Seed, build the trainee, train it (every process under DDP), then save its model on the main process;
    None on the others."""
    torch.manual_seed(settings.seed)
    trainee = build()
    run = train_loop(trainee.objective, trainee.groups, trainee.views, settings, rt.device, work, desc,
                     rt.val_accuracy_fn(trainee.model, trainee.preprocess), rt.num_workers)
    if not dist.is_main():
        return None
    trainee.model.requires_grad_(True)  # a linear probe froze the body
    save_trained(trainee.model, trainee.preprocess, rt.data.classes, work / "model")
    return Trained(trainee, run)
