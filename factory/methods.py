"""The trained methods of a build, declared once: training, export, compute accounting, the licences and the
report iterate :data:`METHODS`."""

from __future__ import annotations

from dataclasses import dataclass

CHANGES_NO_RESULT = True


@dataclass(frozen=True)
class Method:
    """One way of training a model of the build."""

    name: str
    """The model's name in the build, the report and the export folder."""
    role: str
    """'student' (the method the factory is about), 'baseline' (a comparison) or 'teacher'."""
    attr: str
    """Its field in the build's plans (:class:`factory.pipeline.BuildPlans`), trained models and outcome."""
    distils: bool
    """Learns from the teacher: its compute includes the teacher side, its quantization-aware fine-tune distils,
    and the teacher's weights reach it."""
    pretrained: tuple[str, ...]
    """Whose documented pre-training its starting weights carry ('teacher', 'student')."""
    training: str
    """Its training, in the compute table's words."""


METHODS = (
    Method("distilled", "student", "distill", True, ("teacher",), "distillation"),
    Method("distilled-pretrained", "baseline", "distill_pretrained", True, ("teacher", "student"), "distillation"),
    Method("scratch", "baseline", "scratch", False, (), "training from scratch"),
    Method("pretrained-finetuned", "baseline", "finetune", False, ("student",), "finetuning"),
    Method("teacher", "teacher", "teacher", False, ("teacher",), "teacher adaptation"),
)
"""Every trained model, in training order, the teacher last."""


def method(name: str) -> Method:
    """The method of model ``name`` ('distilled', ..., 'teacher')."""
    return next(m for m in METHODS if m.name == name)
