"""onnxruntime's quantizers as the factory runs them: one set of static INT8 options, one pre-process, the
quantizations the export stage chooses among (static INT8, dynamic INT8, FP16) and the names of their files.

:mod:`factory.stages.export` decides which of these to run and judges the results; :mod:`factory.quant.qat` builds
its simulation on the same static INT8 quantization, so both see the same graph.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from factory.files import atomic_path
from factory.onnx_tools import set_metadata
from factory.quant.equalize import correct_biases, equalize

if TYPE_CHECKING:
    from factory.recipe import Recipe

CALIBRATION = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}


class Calibration(CalibrationDataReader):
    """Calibration batches (float32 NCHW) as onnxruntime's quantizer reads them."""

    def __init__(self, batches: list[np.ndarray]):
        self._batches = iter([{"input": b} for b in batches])

    def get_next(self):
        return next(self._batches, None)


@contextlib.contextmanager
def quiet_quantizer():
    """onnxruntime.quantization warns through the root logger, which installs a stderr handler on it for the
    rest of the process, and its histogram calibrators print their progress; both are noise here."""
    root = logging.getLogger()
    guard = logging.NullHandler() if not root.handlers else None
    if guard:
        root.addHandler(guard)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        if guard:
            root.removeHandler(guard)


def quantize_static_int8(fp32: Path, out: Path, calibration: list[np.ndarray], method: str, exclude: list[str],
                         equalization: str | None = None, reduce_range: bool = False) -> None:
    """Static INT8, QDQ format, per-channel weights (7-bit with ``reduce_range``, see
    :attr:`factory.profiles.DeviceProfile.reduce_range`), activations calibrated on task images;
    ``equalization`` ('exact' or 'relu6', see :func:`prepare_for_int8`) equalizes and corrects biases first."""
    pre = out.with_name(out.name + ".pre.onnx")
    with atomic_path(out, ".onnx") as tmp:
        with quiet_quantizer():
            prepare_for_int8(fp32, pre, calibration, method, exclude, equalization, reduce_range)
            quantize_qdq(pre, tmp, calibration, method, exclude, reduce_range)
        pre.unlink(missing_ok=True)
        _carry_metadata(fp32, tmp, "int8")


def prepare_for_int8(fp32: Path, pre: Path, calibration: list[np.ndarray], method: str, exclude: list[str],
                     equalization: str | None, reduce_range: bool = False) -> None:
    """``fp32`` as static quantization reads it, written to ``pre``: onnxruntime's pre-processing (BatchNorm
    folded), then with ``equalization`` cross-layer equalization (exact, or 'relu6': through ReLU6 replaced
    by ReLU) and bias correction measured against a first quantization (:mod:`factory.quant.equalize`)."""
    pre_process(fp32, pre)
    if not equalization:
        return
    model = onnx.load(str(pre))
    equalize(model, through_relu6=equalization == "relu6")
    onnx.save(model, str(pre))
    probe = pre.with_name(pre.name + ".probe.onnx")
    try:
        quantize_qdq(pre, probe, calibration, method, exclude, reduce_range)
        correct_biases(model, onnx.load(str(probe)), calibration)
    finally:
        probe.unlink(missing_ok=True)
    onnx.save(model, str(pre))


def pre_process(fp32: Path, pre: Path) -> None:
    """``fp32`` as onnxruntime's quantizers read it, written to ``pre``: BatchNorm folded into convolutions and
    shapes inferred (without the symbolic pass, which these convnets do not need)."""
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)


def static_int8_options(calibrate_method: CalibrationMethod, exclude: list[str], reduce_range: bool,
                        overrides: dict | None = None) -> dict:
    """The options of every static INT8 file the factory writes (calibrated here or by quantization-aware
    training): QDQ, per-channel symmetric INT8 weights (7-bit with ``reduce_range``), asymmetric UINT8
    activations; ``overrides``: onnxruntime's ``TensorQuantOverrides`` (scales fixed by a simulation)."""
    extra = {"ActivationSymmetric": False, "WeightSymmetric": True}
    if overrides is not None:
        extra["TensorQuantOverrides"] = overrides
    return {"quant_format": QuantFormat.QDQ, "per_channel": True, "reduce_range": reduce_range,
            "activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8, "calibrate_method": calibrate_method,
            "nodes_to_exclude": exclude, "extra_options": extra}


def quantize_qdq(pre: Path, out: Path, calibration: list[np.ndarray], method: str, exclude: list[str],
                 reduce_range: bool = False) -> None:
    """The factory's static INT8 of a pre-processed file (:func:`static_int8_options`), calibrated by
    ``method``."""
    quantize_static(str(pre), str(out), Calibration(calibration),
                    **static_int8_options(CALIBRATION[method], exclude, reduce_range))


def quantize_dynamic_int8(fp32: Path, out: Path, exclude: list[str]) -> None:
    """Dynamic INT8: INT8 weights (per channel for MatMul; onnxruntime gives a Conv weight one scale),
    activations quantized at run time (no calibration)."""
    pre = out.with_name(out.name + ".pre.onnx")
    with atomic_path(out, ".onnx") as tmp:
        with quiet_quantizer():
            pre_process(fp32, pre)
            quantize_dynamic(str(pre), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                             nodes_to_exclude=exclude)
        pre.unlink(missing_ok=True)
        _carry_metadata(fp32, tmp, "int8-dynamic")


def convert_fp16(fp32: Path, out: Path, exclude: list[str]) -> None:
    """FP16 weights and compute (for GPU targets), float32 input and output kept for callers."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with atomic_path(out, ".onnx") as tmp:
        onnx.save(convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True, node_block_list=exclude or None),
                  str(tmp))
        _carry_metadata(fp32, tmp, "fp16")


def quantize(method: str, fp32: Path, out: Path, calibration: list[np.ndarray] | None, calib_method: str | None,
             exclude: list[str], equalization: str | None = None, reduce_range: bool = False) -> None:
    """``fp32`` quantized by ``method`` ('static_int8', 'dynamic_int8' or 'fp16') into ``out``; ``equalization``
    and ``reduce_range`` apply to static INT8 only."""
    if method == "static_int8":
        quantize_static_int8(fp32, out, calibration, calib_method, exclude, equalization, reduce_range)
    elif method == "dynamic_int8":
        quantize_dynamic_int8(fp32, out, exclude)
    else:
        convert_fp16(fp32, out, exclude)


def quantization_method(recipe: Recipe) -> str | None:
    """The quantization ``recipe`` asks for ('static_int8', 'dynamic_int8' or 'fp16'; 'auto' is the device
    profile's preset), or None for FP32 only."""
    method = recipe.budget.device().precision if recipe.export.quantize == "auto" else recipe.export.quantize
    return None if method in ("none", "fp32") else method


def _carry_metadata(fp32: Path, quantized: Path, precision: str) -> None:
    """Carry the FP32 file's metadata over to ``quantized`` and record its precision."""
    proto = onnx.load(str(quantized))
    set_metadata(proto, {p.key: p.value for p in onnx.load(str(fp32)).metadata_props} | {"precision": precision})
    onnx.save(proto, str(quantized))


PRECISION_LABEL = {"static_int8": "int8", "dynamic_int8": "int8-dynamic", "fp16": "fp16"}


def quantized_file(method: str) -> str:
    """The name of the file quantized by ``method`` ('static_int8', 'dynamic_int8' or 'fp16')."""
    return f"model.{PRECISION_LABEL[method]}.onnx"
