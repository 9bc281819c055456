"""The task data every stage works on: classes and train / val / test images (plain data, no torch, so
that finding it (:mod:`factory.sources`) and checking a recipe stay light)."""

from __future__ import annotations

import dataclasses
import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

CHECK_PER_CLASS = 20


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass
class TaskData:
    """The task's classes and its train / val / test samples."""

    root: Path
    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    fingerprint: str
    synthetic: list[Sample] = field(default_factory=list)
    source: str = ""
    """Where the images came from (:mod:`factory.sources`)."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """Images of the source that cannot be decoded and were left out: path under ``root``, why."""
    real_fingerprint: str | None = None
    """The fingerprint without the synthetic images (set when they are added)."""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def with_synthetic(self, samples: list[Sample], key: str) -> TaskData:
        """The same task with synthetic training images added (``key`` identifies them)."""
        real = self.real_fingerprint or self.fingerprint
        return dataclasses.replace(self, synthetic=samples, real_fingerprint=real,
                                   fingerprint=hashlib.sha256(f"{real}|{key}".encode()).hexdigest()[:20])

    def real_only(self) -> TaskData:
        """The same task without synthetic images."""
        return dataclasses.replace(self, synthetic=[], fingerprint=self.real_fingerprint or self.fingerprint,
                                   real_fingerprint=None)

    def per_class(self, samples: list[Sample]) -> list[int]:
        """How many of ``samples`` each class has."""
        counts = [0] * self.num_classes
        for sample in samples:
            counts[sample.label] += 1
        return counts

    def check_split(self, per_class: int = CHECK_PER_CLASS) -> tuple[str, list[Sample]]:
        """Images for decisions made after training (calibration method, accepting a quantized model):
        the validation split, or, when the recipe holds none out, a seeded slice of ``per_class``
        training images per class (at most half of each class, so calibration keeps the rest). Never the
        test split. Returns ``(description, samples)``."""
        if self.val:
            return "validation split", self.val
        rng = random.Random(0)
        chosen = []
        for label in range(self.num_classes):
            own = [s for s in self.train if s.label == label]
            chosen += sorted(rng.sample(own, min(per_class, len(own) // 2)), key=lambda s: s.path)
        return (f"{len(chosen)} training images (up to {per_class} per class; data.val_fraction is 0, so no "
                "validation split exists)"), chosen
