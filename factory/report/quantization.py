"""The shipped model's export in the report: ONNX parity with PyTorch, and every quantization attempt with its
remedy (post-training, equalized, quantization-aware, layers in float)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from factory.fields import Strict

if TYPE_CHECKING:
    from factory.report.outcome import BuildOutcome

CHANGES_NO_RESULT = True  # no stage result depends on this module (factory.identity)


class Parity(Strict):
    images: int
    max_abs_diff: float
    top1_agreement: float


class QuantAttempt(Strict):
    calibration: str | None
    float_nodes: list[str]
    accuracy: float
    drop: float
    drop_low: float
    drop_high: float
    confidence: float
    accepted: bool
    used: bool
    equalization: str | None = None
    qat_epochs: int = 0
    remedy: str = "ptq"
    """'ptq', 'equalized' (cross-layer equalization and bias correction), 'equalized-relu6', 'qat'
    (quantization-aware fine-tuning) or 'float-layers'."""


class QatRun(Strict):
    """The quantization-aware fine-tune behind a 'qat' attempt."""

    calibration: str
    epochs: int
    objective: str
    """'distillation' (from the teacher) or 'cross-entropy' (a baseline's own objective)."""
    flops: float
    wall_s: float
    parity: dict[str, Any]
    """The QDQ file run by onnxruntime against the simulation it was trained as (:func:`factory.qat.qat_parity`)."""
    history: list[dict[str, Any]]


class Quantization(Strict):
    method: str
    label: str
    file: str | None
    accepted: bool
    checked_on: str
    fp32_accuracy: float
    attempts: list[QuantAttempt]
    calibration_images: int
    reason: str | None
    qat: QatRun | None = None
    weight_bits: int = 8
    """7: static INT8 with 7-bit weights, for x86 kernels without VNNI (the profile's ``reduce_range``)."""
    reference: bool = False
    """INT8 accuracy computed by onnxruntime's QDQ reference: this host's kernels overflow where the device's don't."""


class ExportSummary(Strict):
    parity: Parity
    preprocess: dict[str, str]
    quantization: Quantization | None


def export_summary(outcome: BuildOutcome) -> ExportSummary:
    """The shipped model's export: its parity with PyTorch, preprocessing and quantization attempts."""
    exported = outcome.shipped.model.export.result
    quant = exported.quantization
    summary = None
    if quant is not None:
        attempts = [QuantAttempt(**dataclasses.asdict(a), remedy=a.remedy) for a in quant.attempts]
        summary = Quantization(**dataclasses.asdict(quant) | {"attempts": attempts})
    return ExportSummary(parity=exported.parity, preprocess=exported.preprocess.metadata(), quantization=summary)
