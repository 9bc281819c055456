"""ONNX export with a parity check, and accuracy-aware quantization with onnxruntime.

Every trained model (the distilled student and each comparison) goes through the same export and
quantization, so they are compared at the precision that would ship. The ONNX file takes a
normalised float32 NCHW batch (``input``, dynamic batch axis) and returns ``logits``. Everything
needed to run it with onnxruntime alone is in its metadata: class names, the full evaluation
preprocessing (see :meth:`factory.data.Preprocess.metadata`), architecture and precision; the
published copy also gets the recipe hash, the teacher and the factory version.

Decisions (the calibration method, accepting a quantized model) are made on the validation split, or
on a slice of training images when there is none, never on the test split; a rejected quantized
model is deleted, so it cannot be published.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from factory.cache import Done, Plan, Stage, StageResult
from factory.context import Runtime
from factory.data import EvalImages, Preprocess
from factory.errors import ExportError
from factory.latency import make_session
from factory.models import load_trained
from factory.train import TrainedModel

if TYPE_CHECKING:
    from factory.recipe import Recipe

CALIBRATION = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}


def export_onnx(model: torch.nn.Module, preprocess: Preprocess, path: Path, metadata: dict[str, str], opset: int) -> None:
    """Export ``model`` to ``path`` (dynamic batch), check it and embed ``metadata``."""
    model = model.cpu().eval()
    example = torch.zeros(2, 3, preprocess.size, preprocess.size)
    tmp = path.with_name(path.name + ".tmp.onnx")
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(tmp), input_names=["input"], output_names=["logits"],
                              opset_version=opset, dynamo=True, external_data=False,
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
    except Exception as err:
        raise ExportError(f"ONNX export of {model.__class__.__name__} failed: {err}") from None
    proto = onnx.load(str(tmp))
    onnx.checker.check_model(proto)
    set_metadata(proto, metadata)
    onnx.save(proto, str(tmp))
    os.replace(tmp, path)


def set_metadata(proto: onnx.ModelProto, metadata: dict[str, str]) -> None:
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in metadata.items():
        prop = existing.get(key) or proto.metadata_props.add()
        prop.key, prop.value = key, str(value)


def stamp_metadata(source: Path, target: Path, metadata: dict[str, str]) -> None:
    """Copy ``source`` to ``target`` with ``metadata`` added (used when publishing)."""
    proto = onnx.load(str(source))
    set_metadata(proto, metadata)
    tmp = target.with_name(f".{target.name}.tmp")
    onnx.save(proto, str(tmp))
    os.replace(tmp, target)


def read_metadata(path: Path) -> dict[str, str]:
    """The factory metadata of an exported ONNX file (as onnxruntime users read it)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)


def onnx_logits(path: Path, preprocess: Preprocess, dataset: EvalImages, threads: int = 2, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Logits of an ONNX classifier over an evaluation dataset, and the labels."""
    sess = make_session(path, threads)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    logits, labels = [], []
    for images, y in loader:
        logits.append(sess.run(None, {"input": preprocess(images).numpy()})[0])
        labels.append(y.numpy())
    return np.concatenate(logits), np.concatenate(labels)


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


def parity(model: torch.nn.Module, preprocess: Preprocess, path: Path, dataset: EvalImages, limit: int = 64) -> dict:
    """Max |logit| difference and top-1 agreement between PyTorch and onnxruntime on real images."""
    subset = torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))
    batch = torch.stack([subset[i][0] for i in range(len(subset))])
    x = preprocess(batch)
    with torch.inference_mode():
        expected = model.cpu().eval()(x).numpy()
    got = make_session(path, 2).run(None, {"input": x.numpy()})[0]
    return {"images": len(subset), "max_abs_diff": float(np.abs(expected - got).max()),
            "top1_agreement": float((expected.argmax(1) == got.argmax(1)).mean())}


class _Calibration(CalibrationDataReader):
    def __init__(self, batches: list[np.ndarray]):
        self._batches = iter([{"input": b} for b in batches])

    def get_next(self):
        return next(self._batches, None)


@contextlib.contextmanager
def _quiet_quantizer():
    """onnxruntime.quantization warns through the root logger, which installs a stderr handler on it for the
    rest of the process; its warnings (per-channel axes of norm weights and the like) are noise here."""
    root = logging.getLogger()
    guard = logging.NullHandler() if not root.handlers else None
    if guard:
        root.addHandler(guard)
    try:
        yield
    finally:
        if guard:
            root.removeHandler(guard)


def quantize_static_int8(fp32: Path, out: Path, calibration: list[np.ndarray], method: str, exclude: list[str]) -> None:
    """Static INT8, QDQ format, per-channel weights, activations calibrated on task images."""
    pre = out.with_name(out.name + ".pre.onnx")
    tmp = out.with_name(out.name + ".tmp.onnx")
    with _quiet_quantizer():
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(tmp), _Calibration(calibration), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CALIBRATION[method], nodes_to_exclude=exclude,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    pre.unlink(missing_ok=True)
    _finish(fp32, tmp, out, "int8")


def quantize_dynamic_int8(fp32: Path, out: Path, exclude: list[str]) -> None:
    """Dynamic INT8: per-channel INT8 weights, activations quantized at run time (no calibration)."""
    pre = out.with_name(out.name + ".pre.onnx")
    tmp = out.with_name(out.name + ".tmp.onnx")
    with _quiet_quantizer():
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_dynamic(str(pre), str(tmp), weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=exclude)
    pre.unlink(missing_ok=True)
    _finish(fp32, tmp, out, "int8-dynamic")


def convert_fp16(fp32: Path, out: Path, exclude: list[str]) -> None:
    """FP16 weights and compute (for GPU targets), float32 input and output kept for callers."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    tmp = out.with_name(out.name + ".tmp.onnx")
    onnx.save(convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True, node_block_list=exclude or None), str(tmp))
    _finish(fp32, tmp, out, "fp16")


def quantize(method: str, fp32: Path, out: Path, calibration: list[np.ndarray] | None, calib_method: str | None,
             exclude: list[str]) -> None:
    """``fp32`` quantized by ``method`` ('static_int8', 'dynamic_int8' or 'fp16') into ``out``."""
    if method == "static_int8":
        quantize_static_int8(fp32, out, calibration, calib_method, exclude)
    elif method == "dynamic_int8":
        quantize_dynamic_int8(fp32, out, exclude)
    else:
        convert_fp16(fp32, out, exclude)


def onnx_metadata(architecture: str, preprocess: Preprocess, classes: list[str], opset: int) -> dict[str, str]:
    """What an exported FP32 file carries: its classes, evaluation preprocessing, architecture and opset."""
    return {"classes": json.dumps(classes), **preprocess.metadata(), "architecture": architecture,
            "precision": "fp32", "opset": str(opset)}


def _finish(fp32: Path, tmp: Path, out: Path, precision: str) -> None:
    """Carry the FP32 file's metadata over, record the precision, and move into place."""
    proto = onnx.load(str(tmp))
    set_metadata(proto, {p.key: p.value for p in onnx.load(str(fp32)).metadata_props} | {"precision": precision})
    onnx.save(proto, str(tmp))
    os.replace(tmp, out)


def sensitive_nodes(path: Path) -> list[str]:
    """The first convolution and the classifier: the layers INT8 hurts most."""
    graph = onnx.load(str(path)).graph
    convs = [n.name for n in graph.node if n.op_type == "Conv"]
    heads = [n.name for n in graph.node if n.op_type in ("Gemm", "MatMul")]
    return convs[:1] + heads[-1:]


PRECISION_LABEL = {"static_int8": "int8", "dynamic_int8": "int8-dynamic", "fp16": "fp16"}


@dataclass(frozen=True)
class ExportPlan(Plan):
    opset: int
    parity_atol: float
    quantize: str | None
    """The quantization to try ('static_int8', 'dynamic_int8', 'fp16'), or None for FP32 only."""
    calibration: str | None
    """Static INT8 only: the calibration method tried first."""
    calibration_images: int | None
    max_accuracy_drop: float | None

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> ExportPlan:
        e = recipe.export
        method = recipe.budget.device().precision if e.quantize == "auto" else e.quantize
        method = None if method in ("none", "fp32") else method
        static = method == "static_int8"
        return cls(e.opset, e.parity_atol, method, e.calibration if static else None,
                   e.calibration_images if static else None, e.max_accuracy_drop if method else None)


@dataclass
class QuantAttempt:
    calibration: str | None
    float_nodes: list[str]
    accuracy: float
    drop: float


@dataclass
class Quantization:
    """Every quantization attempt and the verdict; ``file`` is None when the quantized model was rejected
    (it is then deleted, so nothing can publish it)."""

    method: str
    label: str
    file: str | None
    accepted: bool
    checked_on: str
    """The images the accuracy drop was measured on (validation split, or a slice of training images)."""
    fp32_accuracy: float
    attempts: list[QuantAttempt]
    calibration_images: int
    reason: str | None = None


@dataclass(kw_only=True)
class Exported(StageResult):
    architecture: str
    preprocess: Preprocess
    parity: dict
    quantization: Quantization | None = None
    files: list[str] = field(default_factory=list)
    """The ONNX files of this export: ``model.onnx`` (FP32) and the accepted quantized file, if any."""


EXPORT = Stage("export", Exported, __name__, ("torch", "onnx", "onnxscript", "onnxruntime"))


def export_model(rt: Runtime, plan: ExportPlan, name: str, trained: Done[TrainedModel]) -> Done[Exported]:
    """Export one trained model to ONNX, checked for parity, and quantize it with accuracy-aware fallback
    (see :func:`accuracy_aware_quantize`)."""

    def run(work: Path) -> Exported:
        model, preprocess = load_trained(trained)
        fp32 = work / "model.onnx"
        export_onnx(model, preprocess, fp32, onnx_metadata(trained.result.model, preprocess, rt.data.classes,
                                                           plan.opset), plan.opset)
        check = parity(model, preprocess, fp32, rt.eval_images("check", preprocess))
        if check["max_abs_diff"] > plan.parity_atol or check["top1_agreement"] < 1.0:
            raise ExportError(
                f"{name}: ONNX output differs from PyTorch (max |diff| {check['max_abs_diff']:.2e} > "
                f"export.parity_atol {plan.parity_atol:g}, top-1 agreement {check['top1_agreement']:.3f}); "
                f"try another export.opset or raise export.parity_atol"
            )
        quant = accuracy_aware_quantize(rt, plan, fp32, preprocess) if plan.quantize else None
        files = [fp32.name] + ([quant.file] if quant and quant.file else [])
        return Exported(architecture=trained.result.model, preprocess=preprocess, parity=check, quantization=quant,
                        files=files)

    return rt.cache.run(EXPORT, plan, {"model": trained, "data": rt.data.fingerprint}, run)


def quantized_file(method: str) -> str:
    return f"model.{PRECISION_LABEL[method]}.onnx"


def calibration_batches(rt: Runtime, preprocess: Preprocess, count: int) -> list[np.ndarray]:
    """``count`` calibration images spread evenly over the calibration split, preprocessed, in batches of 16."""
    calib_set = rt.eval_images("calibration", preprocess)
    step = max(1, len(calib_set) // count)
    idx = list(range(0, len(calib_set), step))[:count]
    images = preprocess(torch.stack([calib_set[i][0] for i in idx])).numpy()
    return [images[i:i + 16] for i in range(0, len(images), 16)]


def accuracy_aware_quantize(rt: Runtime, plan: ExportPlan, fp32: Path, preprocess: Preprocess) -> Quantization:
    """Quantize ``fp32`` with ``plan.quantize`` and check the top-1 drop against ``plan.max_accuracy_drop`` on
    the check split (validation, or a slice of training images; never test).

    Static INT8 tries the plan's calibration method, then the others, then keeps the sensitive
    layers (first conv, classifier) in float; the other methods try as-is, then with those layers in
    float. Returns every attempt; when all lost too much the quantized file is deleted.
    """
    method = plan.quantize
    out = fp32.with_name(quantized_file(method))
    checked_on = rt.data.check_split()[0]
    check_set = rt.eval_images("check", preprocess)
    base_acc = top1(*onnx_logits(fp32, preprocess, check_set))
    sensitive = sensitive_nodes(fp32)
    calibration, n_calib = None, 0
    if method == "static_int8":
        calibration = calibration_batches(rt, preprocess, plan.calibration_images)
        n_calib = sum(len(b) for b in calibration)
        methods = [plan.calibration] + [m for m in CALIBRATION if m != plan.calibration]
        plans = [(m, []) for m in methods] + [(plan.calibration, sensitive)]
    else:
        plans = [(None, []), (None, sensitive)]
    attempts = []
    for calib_method, exclude in plans:
        quantize(method, fp32, out, calibration, calib_method, exclude)
        acc = top1(*onnx_logits(out, preprocess, check_set))
        attempts.append(QuantAttempt(calib_method, exclude, acc, base_acc - acc))
        if base_acc - acc <= plan.max_accuracy_drop:
            break
    label = PRECISION_LABEL[method]
    accepted = attempts[-1].drop <= plan.max_accuracy_drop
    result = Quantization(method=method, label=label, file=out.name if accepted else None, accepted=accepted,
                          checked_on=checked_on, fp32_accuracy=base_acc, attempts=attempts, calibration_images=n_calib)
    if not accepted:
        out.unlink(missing_ok=True)
        result.reason = (f"every {label} attempt lost more than export.max_accuracy_drop={plan.max_accuracy_drop:g} "
                         f"of top-1 on {checked_on} (smallest drop {min(a.drop for a in attempts) * 100:.1f} "
                         f"points); the {label} file was not published, FP32 ships")
    return result
