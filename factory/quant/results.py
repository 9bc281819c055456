"""What a quantization tried and decided: the typed results the export stage stores in its cache and the report
renders as they are (declared once; pydantic dataclasses, so both validate them the same strict way).
Imports no torch."""

from __future__ import annotations

from dataclasses import field
from typing import Any

from pydantic.dataclasses import dataclass

from factory.fields import STRICT

REMEDIES = ("ptq", "equalized", "equalized-relu6", "qat", "float-layers")


@dataclass(config=STRICT)
class QuantAttempt:
    """One quantized model judged against FP32 on the check split: its top-1 ``accuracy`` and ``drop`` (FP32
    minus quantized) with the drop's paired interval (``drop_low`` to ``drop_high`` at ``confidence``)."""

    calibration: str | None
    float_nodes: list[str]
    accuracy: float
    drop: float
    drop_low: float
    drop_high: float
    confidence: float
    accepted: bool
    """Not shown to lose more than the limit."""
    used: bool = False
    """The attempt whose file was kept (the first within the limit, else the accepted one losing least)."""
    equalization: str | None = None
    """Static INT8: cross-layer equalization and bias correction first ('exact', or 'relu6': through ReLU6
    replaced by ReLU); None for plain post-training quantization."""
    qat_epochs: int = 0
    """Static INT8: epochs of quantization-aware fine-tuning behind this file (0: post-training)."""
    remedy: str = ""
    """Which remedy this attempt is (one of :data:`REMEDIES`), derived from the fields above."""

    def __post_init__(self) -> None:
        if self.float_nodes:
            self.remedy = "float-layers"
        elif self.qat_epochs:
            self.remedy = "qat"
        else:
            self.remedy = {None: "ptq", "exact": "equalized", "relu6": "equalized-relu6"}[self.equalization]


@dataclass(config=STRICT)
class QatRun:
    """One quantization-aware fine-tune: its calibration, epochs, cost and parity with the simulation."""

    calibration: str
    epochs: int
    objective: str
    """'distillation' (from the teacher) or 'cross-entropy' (a baseline's own objective)."""
    flops: float
    wall_s: float
    parity: dict[str, Any]
    """The QDQ file run by onnxruntime against the simulation it was trained as (:func:`factory.quant.qat.qat_parity`)."""
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass(config=STRICT)
class Quantization:
    """Every quantization attempt and the verdict; ``file`` is None when the quantized model was rejected
    (it is then deleted, so nothing can publish it)."""

    method: str
    label: str
    file: str | None
    accepted: bool
    checked_on: str
    """The images the accuracy drop was measured on (the validation split)."""
    fp32_accuracy: float
    attempts: list[QuantAttempt]
    calibration_images: int
    reason: str | None = None
    qat: QatRun | None = None
    """The quantization-aware fine-tune, when that remedy was tried (its cost counts in its method's compute)."""
    weight_bits: int = 8
    """Static INT8: 7 for the 7-bit weights of a profile with ``reduce_range``."""
    reference: bool = False
    """The quantized files were judged (and are benchmarked) by onnxruntime's QDQ reference, not this host's
    kernels (:attr:`factory.stages.export.ExportPlan.int8_reference`)."""
