"""The ``augment_filter`` stage: every synthetic image scored by the teacher adapted on the real images only. An
image whose top-1 is not its class, or whose class probability is under ``augment.filter.min_confidence``, is
dropped. Its ``manifest.jsonl`` adds the verdict and score to each image's line; changing the threshold reruns
the scoring (seconds), never the generation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from factory.context import Runtime
from factory.files import write_atomic
from factory.stage import Done, Plan, Stage, StageResult
from factory.stages.augment import MANIFEST, SyntheticImages, read_manifest
from factory.task import Sample

if TYPE_CHECKING:
    from factory.recipe import Recipe

@dataclass(frozen=True)
class FilterPlan(Plan):
    min_confidence: float

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> FilterPlan | None:
        a = recipe.augment
        return cls(a.filter.min_confidence) if a.enabled and a.filter.enabled else None


@dataclass(kw_only=True)
class FilteredImages(StageResult):
    kept: int
    dropped: int
    per_class: dict[str, list[int]]
    """Class name -> [kept, dropped]."""


FILTER = Stage("augment_filter", FilteredImages, __name__, ("torch", "timm", "pillow"))


def filter_synthetic(rt: Runtime, plan: FilterPlan, synthetic: Done[SyntheticImages],
                     teacher: Done) -> Done[FilteredImages]:
    """Score every synthetic image with ``teacher`` (adapted on the real images) at its evaluation
    preprocessing; keep those whose top-1 is their class with probability >= ``plan.min_confidence``."""
    from factory.data import EvalImages
    from factory.models import load_trained
    from factory.evaluate import forward_flops_per_image, predict

    def run(work: Path) -> FilteredImages:
        records = read_manifest(synthetic.file(MANIFEST))
        classes = list(rt.data.classes)
        model, preprocess = load_trained(teacher)
        samples = [Sample(synthetic.path / r["file"], r["label"]) for r in records]
        logits, _ = predict(model, preprocess, EvalImages(samples, rt.store, preprocess), rt.device,
                            desc="teacher scores synthetic images")
        probs = logits.softmax(1)
        per_class = {name: [0, 0] for name in classes}
        for record, p in zip(records, probs):
            top1, score = int(p.argmax()), round(float(p[record["label"]]), 5)  # judged as recorded
            verdict = "kept" if top1 == record["label"] and score >= plan.min_confidence else (
                f"dropped: teacher top-1 is {classes[top1]}" if top1 != record["label"] else
                f"dropped: class probability {score:.3f} < {plan.min_confidence}")
            record.update(teacher_top1=classes[top1], score=score, kept=verdict == "kept", verdict=verdict)
            per_class[record["class"]][0 if record["kept"] else 1] += 1
        write_atomic(work / MANIFEST, "".join(json.dumps(r) + "\n" for r in records))
        kept = sum(k for k, _ in per_class.values())
        return FilteredImages(kept=kept, dropped=len(records) - kept, per_class=per_class,
                              flops=forward_flops_per_image(model, preprocess.size) * len(records))

    return rt.cache.run(FILTER, plan, {"augment": synthetic, "teacher": teacher}, run)
