"""The shipped model in a second runtime family: OpenVINO IR (``<stem>.xml`` + ``<stem>.bin``), for Intel and other
x86 edge boxes, judged like an ONNX file.

The IR is the shipped ONNX file converted by OpenVINO's own converter (``openvino.convert_model``): a static INT8
QDQ file keeps the quantization the build chose and judged (calibration, remedies, layers kept in float), and
OpenVINO runs those convolutions in INT8. It is not quantized again with NNCF: that would be a second quantization
that no judgement of the build covered. The IR runs at float32 inference precision where it is float (OpenVINO
would otherwise pick bf16 on CPUs that have it), so that it computes what the ONNX file computes.

Judged as every form of the shipped model is (:mod:`factory.formats`: on the validation split against the ONNX file
with the paired rule, timed beside it); its test accuracy and agreement with ``factory predict`` are checked here,
with how many of its layers OpenVINO runs in INT8. Without the ``openvino`` package the format is skipped with one
line saying what to install. Imports no torch.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

from pydantic.dataclasses import dataclass

from factory.fields import STRICT
from factory.runtime.openvino import INSTALL, installed

CHANGES_NO_RESULT = True


@dataclass(config=STRICT)
class OpenVinoExport:
    """The shipped model as OpenVINO IR and its check on the test split (its verdict on validation and its latency
    are its row of :class:`factory.formats.FormatRow`)."""

    file: str
    """The IR's ``.xml`` (its weights in the ``.bin`` beside it)."""
    source: str
    """The ONNX file it was converted from."""
    openvino: str
    layers: int
    """Convolution and fully-connected layers of the compiled model."""
    int8_layers: int
    """Of those, the ones OpenVINO's CPU plugin runs in 8-bit integers (``runtimePrecision`` u8 or i8)."""
    images: int
    accuracy: float
    agreement: float
    """Share of test images on which the IR names the same class as the ONNX file (``factory predict``)."""


def missing() -> str | None:
    """One line saying what to install when OpenVINO is not installed; None when it is."""
    if not installed():
        return f"OpenVINO IR skipped: the openvino package is not installed; {INSTALL}"
    return None


def write_ir(model: Path, folder: Path) -> Path:
    """``model`` (ONNX) converted to ``<stem>.xml`` + ``<stem>.bin`` in ``folder``, weights kept as they are, with
    OpenVINO's usage telemetry off (:func:`_without_telemetry`)."""
    import openvino as ov

    xml = folder / f"{model.stem}.xml"
    with _without_telemetry():
        converted = ov.convert_model(str(model))
    ov.save_model(converted, str(xml), compress_to_fp16=False)
    return xml


@contextlib.contextmanager
def _without_telemetry():
    """``convert_model`` sends usage telemetry unless it runs in CI: it writes a client id under the home folder
    and forks a process per event to post it to Google Analytics, and offline that process can block in the DNS
    lookup and hold the build at exit for ever (seen in a two-process build). A build reaches for no network, so
    the conversion runs as OpenVINO's converter runs in CI, where it declines telemetry."""
    before = os.environ.get("CI")
    os.environ["CI"] = "true"
    try:
        yield
    finally:
        if before is None:
            del os.environ["CI"]
        else:
            os.environ["CI"] = before


def int8_layers(compiled) -> tuple[int, int]:
    """(convolution and fully-connected layers, those run in 8-bit integers) of an IR as OpenVINO compiled it."""
    ops = compiled.get_runtime_model().get_ops()
    kinds = [(op.get_rt_info()["layerType"].astype(str), op.get_rt_info()["runtimePrecision"].astype(str)) for op in ops]
    layers = [precision for kind, precision in kinds if kind in ("Convolution", "FullyConnected", "MatMul")]
    return len(layers), sum(precision in ("u8", "i8") for precision in layers)


def openvino_export(shipped: Path, folder: Path, images: Sequence[tuple[Path, int]], expected: Sequence[int],
                    threads: int) -> OpenVinoExport:
    """The IR of the shipped ONNX file in ``folder``, and its classes on ``images`` (path, label) against the labels
    and ``expected`` (what ``factory predict`` names with the shipped file)."""
    import openvino as ov

    from factory.formats import scores_on_test
    from factory.runtime.model import ExportedModel

    xml = write_ir(shipped, folder)
    ir = ExportedModel.open(xml, threads)
    got = ir.top1([path for path, _ in images])
    layers, in_int8 = int8_layers(ir.session.compiled)
    accuracy, agreement = scores_on_test(got, images, expected)
    return OpenVinoExport(file=xml.name, source=shipped.name, openvino=ov.__version__.split("-")[0], layers=layers,
                          int8_layers=in_int8, images=len(images), accuracy=accuracy, agreement=agreement)
