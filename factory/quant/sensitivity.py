"""Which layers static INT8 (or dynamic INT8, FP16) hurts most: the ranking the export's accuracy-aware
quantization reads to keep the fewest layers in float. Static INT8 is ranked by onnxruntime's
``qdq_loss_debug`` (SQNR of each layer's weight and output activation), the others by measurement (KL to the
FP32 predictions with one layer kept in float)."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import qdq_loss_debug
from onnxruntime.quantization.quant_utils import DEQUANT_OUTPUT_SUFFIX, QUANT_INPUT_SUFFIX

from factory.quant.quantizers import Calibration, prepare_for_int8, quantize, quantize_qdq, quiet_quantizer
from factory.runtime.session import make_session

FLOAT_LAYER_OPS = ("Conv", "Gemm", "MatMul")
"""The layers that can be kept in float when quantization loses too much."""
MAX_FLOAT_LAYERS = 8


def float_layer_cap(layers: int) -> int:
    """The most layers kept in float: a quarter of them, at most :data:`MAX_FLOAT_LAYERS`, at least one."""
    return max(1, min(MAX_FLOAT_LAYERS, layers // 4))


def layer_nodes(path: Path) -> list[str]:
    """The Conv, Gemm and MatMul nodes of ``path``, in graph order (node names survive quant_pre_process)."""
    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type in FLOAT_LAYER_OPS]


def _sqnr(x: np.ndarray | list[np.ndarray], y: np.ndarray | list[np.ndarray]) -> float:
    """qdq_loss_debug's SQNR in dB, but infinite when nothing changed: the module gives all-zero tensors (the
    last convolution of a zero-initialised residual branch) 0 dB, which would rank them the most sensitive."""
    xs, ys = ([x], [y]) if isinstance(x, np.ndarray) else (x, y)
    if all(np.array_equal(a, b) for a, b in zip(xs, ys, strict=True)):
        return math.inf
    return qdq_loss_debug.compute_signal_to_quantization_noice_ratio(x, y)


def static_sensitivity(fp32: Path, calibration: list[np.ndarray], method: str, batches: list[np.ndarray],
                       equalization: str | None = None, reduce_range: bool = False) -> dict[str, float]:
    """How much static INT8 (calibrated with ``method``) hurts each Conv/Gemm/MatMul node of ``fp32``: the
    lowest SQNR (dB; lower is more sensitive) of its weight and of its output activation's local quantization
    error (averaged over ``batches``), measured with onnxruntime's ``qdq_loss_debug``. A node whose weight and
    output stay float (not quantized) scores infinity."""
    debug = qdq_loss_debug
    with tempfile.TemporaryDirectory(dir=fp32.parent, prefix=".sensitivity-") as tmp:
        pre, qdq, augmented = (str(Path(tmp) / name) for name in ("pre.onnx", "qdq.onnx", "augmented.onnx"))
        with quiet_quantizer():
            prepare_for_int8(fp32, Path(pre), calibration, method, [], equalization, reduce_range)
            quantize_qdq(Path(pre), Path(qdq), calibration, method, [], reduce_range)
            weights = debug.compute_weight_error(debug.create_weight_matching(pre, qdq), _sqnr)
        debug.modify_model_output_intermediate_tensors(qdq, augmented, ["QuantizeLinear", "DequantizeLinear"])
        activations = _activation_sqnr(augmented, _folded_activations(onnx.load(pre).graph), batches)
        graph = onnx.load(qdq).graph
    scores = {}
    for node in (n for n in graph.node if n.op_type in FLOAT_LAYER_OPS):
        weight = weights.get(node.input[1].removesuffix(DEQUANT_OUTPUT_SUFFIX), math.inf)
        scores[node.name] = min(weight, activations.get(node.output[0].removesuffix(QUANT_INPUT_SUFFIX), math.inf))
    return scores


def _folded_activations(graph: onnx.GraphProto) -> dict[str, tuple[float, float]]:
    """The outputs of Relu and Clip nodes and their range. The QDQ quantizer removes these activations and
    lets the quantization of their output (range from 0, or the clip's) do their clamping, so the tensor
    before that quantization is the unclamped one: it is clamped before its quantization error is measured."""
    consts = {i.name: float(onnx.numpy_helper.to_array(i).item()) for i in graph.initializer
              if math.prod(i.dims) == 1}
    folded = {}
    for node in graph.node:
        if node.op_type == "Relu":
            folded[node.output[0]] = (0.0, math.inf)
        elif node.op_type == "Clip":
            bounds = [*node.input[1:], "", ""]
            folded[node.output[0]] = (consts.get(bounds[0], -math.inf), consts.get(bounds[1], math.inf))
    return folded


def _activation_sqnr(augmented: str, folded: dict[str, tuple[float, float]],
                     batches: list[np.ndarray]) -> dict[str, float]:
    """Each quantized activation's SQNR (dB) before vs after its QuantizeLinear/DequantizeLinear pair, averaged
    over ``batches`` (one at a time: the augmented model returns every quantized activation of a batch)."""
    debug = qdq_loss_debug
    errors: dict[str, list[float]] = {}
    for batch in batches:
        matched = debug.create_activation_matching(debug.collect_activations(augmented, Calibration([batch])))
        for name, match in matched.items():
            low, high = folded.get(name, (-math.inf, math.inf))
            before = [np.clip(t, low, high) for t in match["pre_qdq"]]
            errors.setdefault(name, []).append(_sqnr(before, match["post_qdq"]))
    return {name: float(np.mean(values)) for name, values in errors.items()}


def measured_sensitivity(method: str, fp32: Path, nodes: list[str], images: np.ndarray) -> dict[str, float]:
    """For each of ``nodes``: the mean KL divergence on ``images`` from ``fp32``'s predictions to those of
    ``fp32`` quantized by ``method`` with only that node kept in float (lower: keeping it in float helps more).
    Used for dynamic INT8 and FP16, whose graphs have no QuantizeLinear/DequantizeLinear pairs for
    onnxruntime's ``qdq_loss_debug`` to compare (dynamic INT8 quantizes activations inside
    ConvInteger/MatMulInteger, FP16 has none); KL to FP32 rather than NLL on the labels, as it measures what
    quantization changes, not how right the model is."""
    reference = log_softmax(make_session(fp32, 2).run(None, {"input": images})[0])
    scores = {}
    with tempfile.TemporaryDirectory(dir=fp32.parent, prefix=".sensitivity-") as tmp:
        out = Path(tmp) / "model.onnx"
        for node in nodes:
            quantize(method, fp32, out, None, None, [node])
            quantized = log_softmax(make_session(out, 2).run(None, {"input": images})[0])
            scores[node] = float((np.exp(reference) * (reference - quantized)).sum(1).mean())
    return scores


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of logits, in float64."""
    shifted = logits.astype(np.float64) - logits.max(1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(1, keepdims=True))


def sensitivity_ranking(method: str, fp32: Path, calibration: list[np.ndarray] | None, calib_method: str | None,
                        images: np.ndarray, equalization: str | None = None, reduce_range: bool = False) -> list[str]:
    """The Conv/Gemm/MatMul nodes ``method`` quantizes, most sensitive first on ``images`` (ties in graph
    order): :func:`static_sensitivity` for static INT8, :func:`measured_sensitivity` otherwise."""
    if method == "static_int8":
        batches = [images[i:i + 8] for i in range(0, len(images), 8)]
        scores = static_sensitivity(fp32, calibration, calib_method, batches, equalization, reduce_range)
    else:  # quantize_dynamic turns each Gemm into '<name>_MatMul' (and an Add) before excluding nodes
        nodes = [f"{n.name}_MatMul" if n.op_type == "Gemm" and method == "dynamic_int8" else n.name
                 for n in onnx.load(str(fp32)).graph.node if n.op_type in FLOAT_LAYER_OPS]
        scores = measured_sensitivity(method, fp32, nodes, images)
    ranked = [name for name in scores if math.isfinite(scores[name])]
    return sorted(ranked, key=scores.__getitem__)
