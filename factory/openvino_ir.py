"""The shipped model in a second runtime family: OpenVINO IR (``<stem>.xml`` + ``<stem>.bin``), for Intel and other
x86 edge boxes, judged like an ONNX file.

The IR is the shipped ONNX file converted by OpenVINO's own converter (``openvino.convert_model``): a static INT8
QDQ file keeps the quantization the build chose and judged (calibration, remedies, layers kept in float), and
OpenVINO runs those convolutions in INT8. It is not quantized again with NNCF: that would be a second quantization
that no judgement of the build covered. The IR runs at float32 inference precision where it is float (OpenVINO
would otherwise pick bf16 on CPUs that have it), so that it computes what the ONNX file computes.

Judged as the factory judges a quantized file: on the validation split, image by image against the ONNX file it
came from, with the paired rule (:func:`factory.decide.noise.drop_beyond`, ``export.max_accuracy_drop``); a
rejected IR is deleted. Its test accuracy and agreement with the ONNX file are reported, and its latency is
measured beside the ONNX file's, rounds interleaved in one process (:func:`factory.latency.measure`). Without
the ``openvino`` package the format is skipped with one line saying what to install. Imports no torch.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic.dataclasses import dataclass

from factory.fields import STRICT
from factory.latency import Latency, LatencySettings, Ratio

CHANGES_NO_RESULT = True  # no stage result depends on this module (factory.identity)

INSTALL = "pip install 'factory[openvino]' (the openvino package)"
RUNTIME = "OpenVINO CPU"
"""How the IR's latency rows name their runtime (the ONNX rows name the onnxruntime execution provider)."""


@dataclass(config=STRICT)
class OpenVinoExport:
    """The shipped model as OpenVINO IR: its verdict on validation, test accuracy and latency beside the ONNX file's."""

    file: str
    """The IR's ``.xml`` (its weights in the ``.bin`` beside it); deleted when rejected."""
    source: str
    """The ONNX file it was converted from."""
    openvino: str
    val_images: int
    val_accuracy: float
    onnx_val_accuracy: float
    drop: float
    """Validation top-1 of the ONNX file minus the IR's, paired image by image."""
    drop_low: float
    drop_high: float
    max_drop: float
    accepted: bool
    test_images: int
    test_accuracy: float
    agreement: float
    """Share of test images on which the IR names the same class as the ONNX file."""
    layers: int
    """Convolution and fully-connected layers of the compiled model."""
    int8_layers: int
    """Of those, the ones OpenVINO's CPU plugin runs in 8-bit integers (``runtimePrecision`` u8 or i8)."""
    latency: Latency | None = None
    onnx_latency: Latency | None = None
    """The ONNX file's latency measured in the same rounds as the IR's."""
    vs_onnx: Ratio | None = None
    """The IR's latency over the ONNX file's, round by round."""


def missing() -> str | None:
    """One line saying what to install when OpenVINO is not installed; None when it is."""
    if importlib.util.find_spec("openvino") is None:
        return f"OpenVINO IR skipped: the openvino package is not installed; {INSTALL}"
    return None


def write_ir(model: Path, folder: Path) -> Path:
    """``model`` (ONNX) converted to ``<stem>.xml`` + ``<stem>.bin`` in ``folder``, weights kept as they are."""
    import openvino as ov

    xml = folder / f"{model.stem}.xml"
    ov.save_model(ov.convert_model(str(model)), str(xml), compress_to_fp16=False)
    return xml


def compile_ir(xml: str | Path, threads: int):
    """The IR compiled for OpenVINO's CPU plugin: ``threads`` inference threads, latency-first, float32 where float."""
    import openvino as ov

    return ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                                                     "INFERENCE_PRECISION_HINT": "f32"})


def ir_logits(xml: Path, batches: Sequence[np.ndarray], threads: int) -> np.ndarray:
    """The IR's logits over preprocessed NCHW float32 ``batches``."""
    request = compile_ir(xml, threads).create_infer_request()
    return np.concatenate([np.asarray(request.infer([batch])[0]) for batch in batches])


def int8_layers(xml: Path, threads: int) -> tuple[int, int]:
    """(convolution and fully-connected layers, those run in 8-bit integers) of the IR as OpenVINO compiles it."""
    ops = compile_ir(xml, threads).get_runtime_model().get_ops()
    kinds = [(op.get_rt_info()["layerType"].astype(str), op.get_rt_info()["runtimePrecision"].astype(str)) for op in ops]
    layers = [precision for kind, precision in kinds if kind in ("Convolution", "FullyConnected", "MatMul")]
    return len(layers), sum(precision in ("u8", "i8") for precision in layers)


def _preprocessed(model, images: Sequence[Path], batch_size: int = 32) -> list[np.ndarray]:
    """``images`` through the shipped file's own preprocessing (:class:`factory.runtime.ExportedModel`), batched."""
    arrays = []
    for path in images:
        with Image.open(path) as image:
            arrays.append(model.preprocess(image))
    return [np.stack(arrays[i:i + batch_size]) for i in range(0, len(arrays), batch_size)]


def _correct(logits: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    return logits.argmax(1) == np.asarray(labels)


def openvino_export(shipped: Path, folder: Path, val: Sequence[tuple[Path, int]], test: Sequence[tuple[Path, int]],
                    max_drop: float, settings: LatencySettings) -> OpenVinoExport:
    """The IR of the shipped ONNX file in ``folder``, judged against that file on ``val`` (path, label) with the
    paired rule and ``max_drop``, scored on ``test``, and (when accepted) its latency measured beside the ONNX
    file's with ``settings``. A rejected IR is deleted."""
    import openvino as ov

    from factory.decide.noise import drop_beyond
    from factory.latency import measure, ratio
    from factory.runtime.model import ExportedModel

    onnx_model = ExportedModel.open(shipped, settings.threads)
    xml = write_ir(shipped, folder)
    scores = {}
    for split, images in (("val", val), ("test", test)):
        batches = _preprocessed(onnx_model, [path for path, _ in images])
        onnx = np.concatenate([onnx_model.logits(batch) for batch in batches])
        ir = ir_logits(xml, batches, settings.threads)
        labels = [label for _, label in images]
        scores[split] = (_correct(onnx, labels), _correct(ir, labels), onnx.argmax(1) == ir.argmax(1))
    (onnx_val, ir_val, _), (_, ir_test, same) = scores["val"], scores["test"]
    beyond, drop = drop_beyond(onnx_val, ir_val, max_drop)
    layers, in_int8 = int8_layers(xml, settings.threads)
    timing = {}
    if beyond:
        xml.unlink()
        xml.with_suffix(".bin").unlink()
    else:
        onnx_latency, ir_latency = measure([(str(shipped), onnx_model.size), (str(xml), onnx_model.size)],
                                           settings, memory=False).latencies
        timing = {"latency": ir_latency, "onnx_latency": onnx_latency, "vs_onnx": ratio(onnx_latency, ir_latency)}
    return OpenVinoExport(
        file=xml.name, source=shipped.name, openvino=ov.__version__.split("-")[0], val_images=len(val),
        val_accuracy=float(ir_val.mean()), onnx_val_accuracy=float(onnx_val.mean()), drop=drop.value,
        drop_low=drop.low, drop_high=drop.high, max_drop=max_drop, accepted=not beyond, test_images=len(test),
        test_accuracy=float(ir_test.mean()), agreement=float(same.mean()), layers=layers, int8_layers=in_int8, **timing)
