"""The shipped model's export in the report: ONNX parity with PyTorch, and every quantization attempt with its
remedy (post-training, equalized, quantization-aware, layers in float)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from factory.fields import Strict
from factory.image_graph import ImageInputCheck
from factory.mobile import MobileExport
from factory.quant.results import Quantization

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
    image_input: ImageInputCheck | None = None
    """The shipped file with its preprocessing in the graph, checked against the runtime on the test split."""
    mobile: MobileExport | None = None
    """The shipped file in onnxruntime's mobile format, checked on the test split."""


def export_summary(outcome: BuildOutcome, image_input: ImageInputCheck | None = None,
                   mobile: MobileExport | None = None) -> ExportSummary:
    """The shipped model's export: its parity with PyTorch, preprocessing, quantization attempts and the check of
    its image-input file."""
    exported = outcome.shipped.model.export.result
    return ExportSummary(parity=exported.parity, preprocess=exported.preprocess.metadata(),
                         quantization=exported.quantization, image_input=image_input, mobile=mobile)
