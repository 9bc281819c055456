"""The task data every stage works on: classes and train / val / test images (plain data, no torch, so
that finding it (:mod:`factory.sources`) and checking a recipe stay light)."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

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

    def small_classes(self, min_images: int = 10, min_val: int = 3) -> list[str]:
        """One warning per class too small to split well: fewer than ``min_images`` labelled images, or fewer
        than ``min_val`` of them held out for validation (every decision about that class rests on those)."""
        warnings = []
        for label, name in enumerate(self.classes):
            train = sum(s.label == label for s in self.train)
            val = sum(s.label == label for s in self.val)
            if train + val < min_images or val < min_val:
                warnings.append(f"class {name!r} is small: {train + val} labelled images, {val} held out for "
                                f"validation and {train} to train on; every decision about it rests on {val} "
                                f"validation image(s): add images of it, or merge it with another class")
        return warnings

    def check_split(self) -> tuple[str, list[Sample]]:
        """The images every decision is made on (the student search, calibration, accepting a quantized
        model, which model ships): the validation split, never test nor an image a model trained on.
        Returns ``(description, samples)``; DataError when the task has no validation split."""
        if not self.val:
            from factory.errors import DataError

            raise DataError(f"{self.source or self.root}: no validation split, and every decision of a build (student "
                            "search, calibration, INT8 acceptance, which model ships) is made on one; set "
                            "data.val_fraction (default 0.1) or give the source a val split")
        return f"the validation split ({len(self.val)} images)", self.val
