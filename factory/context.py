"""What every stage's run needs besides its plan: the task data, the cache, the device and how to load
images. It holds no recipe: a stage reads the recipe only through its plan, so its cache key is
complete by construction."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from factory.cache import StageCache
from factory.data import EvalImages, ImageStore, Preprocess, TrainViews, ViewPlan
from factory.task import TaskData


@dataclass
class Runtime:
    data: TaskData
    cache: StageCache
    device: torch.device
    num_workers: int = 0
    """DataLoader workers: how fast, never what, a stage computes (so in no plan)."""
    store: ImageStore = field(init=False)

    def __post_init__(self) -> None:
        self.store = ImageStore()

    def train_views(self, plan: ViewPlan, data: TaskData | None = None) -> TrainViews:
        """Seeded training views of the real and synthetic training images of ``data`` (default: the task's)."""
        data = data or self.data
        return TrainViews(data.train + data.synthetic, self.store, plan)

    def eval_images(self, split: str, preprocess: Preprocess) -> EvalImages:
        """Images of ``split`` as ``preprocess`` evaluates them. Splits: 'val', 'test', 'check' (what
        post-training decisions are made on: see :meth:`TaskData.check_split`) and 'calibration' (real and
        synthetic training images outside the check split)."""
        if split == "calibration":
            held_out = {s.path for s in self.data.check_split()[1]}
            samples = [s for s in self.data.train + self.data.synthetic if s.path not in held_out]
        elif split == "check":
            samples = self.data.check_split()[1]
        else:
            samples = {"val": self.data.val, "test": self.data.test}[split]
        return EvalImages(samples, self.store, preprocess)

    def with_data(self, data: TaskData) -> Runtime:
        """A runtime like this one (sharing its decoded images) for ``data``."""
        changed = dataclasses.replace(self, data=data)
        changed.store = self.store
        return changed

    def val_accuracy_fn(self, model, preprocess: Preprocess):
        """Per-epoch validation accuracy, or None when the recipe holds out no validation set."""
        if not self.data.val:
            return None
        from factory.evaluate import accuracy

        val = self.eval_images("val", preprocess)
        return lambda: accuracy(model, preprocess, val, self.device)
