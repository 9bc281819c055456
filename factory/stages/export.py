"""ONNX export with a parity check, and accuracy-aware INT8 quantization with onnxruntime.

The ONNX file takes a normalised float32 NCHW batch (``input``, dynamic batch axis) and returns
``logits``. Everything needed to run it with onnxruntime alone is in its metadata: class names,
mean, std, input size, recipe hash, teacher and factory version.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import (
    CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from factory import __version__
from factory.cache import StageOutput
from factory.context import BuildContext
from factory.data import EvalImages, Preprocess
from factory.errors import ExportError
from factory.latency import make_session
from factory.models import load_trained
from factory.profiles import get_profile

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


def quantize_static_int8(fp32: Path, out: Path, calibration: list[np.ndarray], method: str, exclude: list[str]) -> None:
    """Static INT8, QDQ format, per-channel weights, activations calibrated on task images."""
    pre = out.with_name(out.name + ".pre.onnx")
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    tmp = out.with_name(out.name + ".tmp.onnx")
    quantize_static(str(pre), str(tmp), _Calibration(calibration), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CALIBRATION[method], nodes_to_exclude=exclude,
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    pre.unlink(missing_ok=True)
    _finish(fp32, tmp, out, "int8")


def quantize_dynamic_int8(fp32: Path, out: Path, exclude: list[str]) -> None:
    """Dynamic INT8: per-channel INT8 weights, activations quantized at run time (no calibration)."""
    pre = out.with_name(out.name + ".pre.onnx")
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    tmp = out.with_name(out.name + ".tmp.onnx")
    quantize_dynamic(str(pre), str(tmp), weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=exclude)
    pre.unlink(missing_ok=True)
    _finish(fp32, tmp, out, "int8-dynamic")


def convert_fp16(fp32: Path, out: Path, exclude: list[str]) -> None:
    """FP16 weights and compute (for GPU targets), float32 input and output kept for callers."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    tmp = out.with_name(out.name + ".tmp.onnx")
    onnx.save(convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True, node_block_list=exclude or None), str(tmp))
    _finish(fp32, tmp, out, "fp16")


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


def export_model(ctx: BuildContext, model_stage: StageOutput, name: str, shipped: bool,
                 teacher: StageOutput | None = None) -> StageOutput:
    """Export one trained model to ONNX, checked for parity. The ``shipped`` student also gets the recipe's
    quantized precision with accuracy-aware fallback (see :func:`accuracy_aware_quantize`) and the
    recipe's hash in its metadata; comparison models are exported only to be benchmarked."""
    e = ctx.recipe.export

    def run(work: Path) -> dict:
        model, preprocess = load_trained(model_stage)
        metadata = {
            "classes": json.dumps(ctx.data.classes), "mean": json.dumps(list(preprocess.mean)),
            "std": json.dumps(list(preprocess.std)), "input_size": json.dumps([3, preprocess.size, preprocess.size]),
            "input_layout": "NCHW float32, RGB scaled to [0,1] then (x - mean) / std",
            "recipe_hash": ctx.recipe.fingerprint() if shipped else "n/a (comparison model)",
            "teacher": teacher_description(teacher), "factory_version": __version__,
            "architecture": model_stage.info["model"], "precision": "fp32",
        }
        fp32 = work / "model.onnx"
        export_onnx(model, preprocess, fp32, metadata, e.opset)
        test_images = ctx.eval_images("test", preprocess.size)
        check = parity(model, preprocess, fp32, test_images)
        if check["max_abs_diff"] > e.parity_atol or check["top1_agreement"] < 1.0:
            raise ExportError(
                f"{name}: ONNX output differs from PyTorch (max |diff| {check['max_abs_diff']:.2e} > "
                f"export.parity_atol {e.parity_atol:g}, top-1 agreement {check['top1_agreement']:.3f}); "
                f"try another export.opset or raise export.parity_atol"
            )
        info: dict = {"parity": check, "preprocess": preprocess.to_dict()}
        if method is not None:
            info["quantization"] = accuracy_aware_quantize(ctx, fp32, method, preprocess)
        return info

    method = quantization_method(ctx) if shipped else None
    return ctx.cache.run(f"export_{name}", ctx.recipe.export.model_dump(mode="json") | {"method": method,
                         "recipe": ctx.recipe.fingerprint() if shipped else None},
                         {"model": model_stage, "data": ctx.data.fingerprint}
                         | ({"teacher": teacher} if teacher is not None else {}), run)


def teacher_description(teacher: StageOutput | None) -> str:
    if teacher is None:
        return "none"
    return f"{teacher.info['weights']}, adapted by {teacher.info['adapt']}"


PRECISION_LABEL = {"static_int8": "int8", "dynamic_int8": "int8-dynamic", "fp16": "fp16"}


def quantization_method(ctx: BuildContext) -> str | None:
    """The recipe's export.quantize, with 'auto' resolved to the device profile's preset; None for 'none'."""
    method = ctx.recipe.export.quantize
    if method == "auto":
        method = get_profile(ctx.recipe.budget.profile).precision
    return None if method in ("none", "fp32") else method


def quantized_file(method: str) -> str:
    return f"model.{PRECISION_LABEL[method]}.onnx"


def accuracy_aware_quantize(ctx: BuildContext, fp32: Path, method: str, preprocess: Preprocess) -> dict:
    """Quantize ``fp32`` with ``method`` and check the accuracy drop against ``export.max_accuracy_drop``.

    Static INT8 tries the recipe's calibration method, then the others, then keeps the sensitive
    layers (first conv, classifier) in float; the other methods try as-is, then with those layers in
    float. Returns every attempt; ``accepted`` is False when all lost too much (ship FP32 then).
    """
    e = ctx.recipe.export
    out = fp32.with_name(quantized_file(method))
    split = "val" if ctx.data.val else "test"
    eval_set = ctx.eval_images(split, preprocess.size)
    base_acc = top1(*onnx_logits(fp32, preprocess, eval_set))
    sensitive = sensitive_nodes(fp32)
    calibration, n_calib = None, 0
    if method == "static_int8":
        calib_set = ctx.eval_images("train", preprocess.size)
        step = max(1, len(calib_set) // e.calibration_images)
        idx = list(range(0, len(calib_set), step))[: e.calibration_images]
        images = preprocess(torch.stack([calib_set[i][0] for i in idx])).numpy()
        calibration, n_calib = [images[i:i + 16] for i in range(0, len(images), 16)], len(idx)
        methods = [e.calibration] + [m for m in CALIBRATION if m != e.calibration]
        plans = [(m, []) for m in methods] + [(e.calibration, sensitive)]
    else:
        plans = [(None, []), (None, sensitive)]
    attempts = []
    for calib_method, exclude in plans:
        if method == "static_int8":
            quantize_static_int8(fp32, out, calibration, calib_method, exclude)
        elif method == "dynamic_int8":
            quantize_dynamic_int8(fp32, out, exclude)
        else:
            convert_fp16(fp32, out, exclude)
        acc = top1(*onnx_logits(out, preprocess, eval_set))
        attempts.append({"calibration": calib_method, "float_nodes": exclude, "accuracy": acc, "drop": base_acc - acc})
        if base_acc - acc <= e.max_accuracy_drop:
            break
    accepted = attempts[-1]["drop"] <= e.max_accuracy_drop
    result = {"method": method, "file": out.name, "split": split, "fp32_accuracy": base_acc, "attempts": attempts,
              "accepted": accepted, "calibration_images": n_calib}
    if not accepted:
        result["reason"] = (f"every {PRECISION_LABEL[method]} attempt lost more than export.max_accuracy_drop="
                            f"{e.max_accuracy_drop:g} of top-1 on the {split} split (best drop "
                            f"{min(a['drop'] for a in attempts):.3f}); shipping FP32")
    return result
