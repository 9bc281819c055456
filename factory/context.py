"""What every stage needs: the recipe, the task data, the cache and the device."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from factory.cache import StageCache
from factory.data import EvalImages, ImageStore, TaskData, TrainViews
from factory.recipe import Recipe
from factory.train import TrainSettings


@dataclass
class BuildContext:
    recipe: Recipe
    data: TaskData
    cache: StageCache
    device: torch.device
    store: ImageStore = field(init=False)

    def __post_init__(self) -> None:
        self.store = ImageStore(self.recipe.data.image_size)

    @property
    def view_size(self) -> int:
        """Resolution of the augmented views shared by teacher and student."""
        return self.recipe.data.image_size

    def train_views(self, seed: int, num_views: int = 0) -> TrainViews:
        return TrainViews(self.data.train + self.data.synthetic, self.store, self.view_size, seed, num_views)

    def eval_images(self, split: str, size: int | None = None) -> EvalImages:
        samples = {"val": self.data.val, "test": self.data.test, "train": self.data.train + self.data.synthetic}[split]
        return EvalImages(samples, self.store, size or self.view_size)

    def settings(self, epochs: int, batch_size: int, seed: int | None = None) -> TrainSettings:
        d = self.recipe.distill
        return TrainSettings(epochs=epochs, batch_size=batch_size, weight_decay=d.weight_decay,
                             warmup_epochs=d.warmup_epochs, seed=d.seed if seed is None else seed,
                             num_workers=self.recipe.data.num_workers)

    def val_accuracy_fn(self, model, preprocess):
        """Per-epoch validation accuracy, or None when the recipe holds out no validation set."""
        if not self.data.val:
            return None
        from factory.train import accuracy

        val = self.eval_images("val")
        return lambda: accuracy(model, preprocess, val, self.device)
