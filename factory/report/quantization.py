"""The shipped model's export in the report: ONNX parity with PyTorch, and every quantization attempt with its
remedy (post-training, equalized, quantization-aware, layers in float)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from factory.fields import Strict
from factory.formats import FormatRow
from factory.image_graph import ImageInputCheck
from factory.mobile import MobileExport
from factory.openvino_ir import OpenVinoExport
from factory.quant.results import Quantization
from factory.stages.apps import AppFiles

if TYPE_CHECKING:
    from factory.report.outcome import BuildOutcome

CHANGES_NO_RESULT = True


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
    openvino: OpenVinoExport | None = None
    """The shipped file as OpenVINO IR, checked on the test split."""
    formats: list[FormatRow] = []
    """Every form of the shipped model written for apps, the ONNX file first: judged on validation against the
    ONNX file with the paired rule, and timed beside it."""


def export_summary(outcome: BuildOutcome) -> ExportSummary:
    """The shipped model's export: its parity with PyTorch, preprocessing, quantization attempts and the checks of
    its forms for apps (:mod:`factory.stages.apps`)."""
    exported = outcome.shipped.model.export.result
    apps = outcome.apps.result if outcome.apps else AppFiles()
    return ExportSummary(parity=exported.parity, preprocess=exported.preprocess.metadata(),
                         quantization=exported.quantization, image_input=apps.image_input, mobile=apps.mobile,
                         openvino=apps.openvino, formats=apps.formats)
