"""The synthetic images' part of the report: how they were made and, per class, the real images, those
generated, kept and dropped by the teacher."""

from __future__ import annotations

from typing import TYPE_CHECKING

from factory.fields import Strict

if TYPE_CHECKING:
    from factory.report.outcome import BuildOutcome

CHANGES_NO_RESULT = True

SYNTHETIC_MANIFEST = "synthetic_manifest.jsonl"
"""The published manifest: one line per synthetic image with its prompt, seed, settings and verdict."""


class ClassImages(Strict):
    real: int
    generated: int
    used: int
    dropped: int


class SyntheticFilter(Strict):
    min_confidence: float
    kept: int
    dropped: int


class Augmentation(Strict):
    mode: str
    pipeline: str
    pipeline_revision: str
    generated: int
    used: int
    flagged_nsfw: int
    filter: SyntheticFilter | None
    for_baselines: bool
    per_class: dict[str, ClassImages]
    manifest: str


def augmentation_of(outcome: BuildOutcome) -> Augmentation | None:
    """The synthetic images of ``outcome`` (None when the recipe made none)."""
    made, verdicts = outcome.augment, outcome.augment_filter
    if made is None:
        return None
    a, data = outcome.recipe.augment, outcome.data
    real, used = data.per_class(data.train), data.per_class(data.synthetic)
    per_class = {name: ClassImages(real=real[i], generated=made.result.per_class[i], used=used[i],
                                   dropped=verdicts.result.per_class[name][1] if verdicts else 0)
                 for i, name in enumerate(data.classes)}
    kept = None if verdicts is None else SyntheticFilter(
        min_confidence=a.filter.min_confidence, kept=verdicts.result.kept, dropped=verdicts.result.dropped)
    m = made.result
    return Augmentation(mode=m.mode, pipeline=m.pipeline, pipeline_revision=m.pipeline_revision, generated=m.images,
                        used=len(data.synthetic), flagged_nsfw=m.flagged_nsfw, filter=kept,
                        for_baselines=a.for_baselines, per_class=per_class, manifest=SYNTHETIC_MANIFEST)
