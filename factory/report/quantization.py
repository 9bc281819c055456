"""The shipped model's export in the report: ONNX parity with PyTorch, and every quantization attempt with its
remedy (post-training, equalized, quantization-aware, layers in float)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from factory.fields import Strict
from factory.quantization import Quantization

if TYPE_CHECKING:
    from factory.report.outcome import BuildOutcome

CHANGES_NO_RESULT = True  # no stage result depends on this module (factory.identity)


class Parity(Strict):
    images: int
    max_abs_diff: float
    top1_agreement: float


class ExportSummary(Strict):
    parity: Parity
    preprocess: dict[str, str]
    quantization: Quantization | None


def export_summary(outcome: BuildOutcome) -> ExportSummary:
    """The shipped model's export: its parity with PyTorch, preprocessing and quantization attempts."""
    exported = outcome.shipped.model.export.result
    return ExportSummary(parity=exported.parity, preprocess=exported.preprocess.metadata(),
                         quantization=exported.quantization)
