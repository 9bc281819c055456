"""A static INT8 QDQ ONNX graph as a sequence of torch steps (:func:`graph_steps`): each QuantizeLinear's fixed
quantization, each Conv/Gemm's weight rebuilt from a torch model's own parameters (BatchNorm folded as torch's
exporter folds it, quantized per output channel as onnxruntime quantizes it: :func:`quantized_weights`), and the
torch function of every other operator (:data:`OPS`). :class:`factory.quant.qat.QuantSim` runs these steps."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from factory.errors import ExportError


INT32_RANGE = float(np.iinfo(np.int32).max) - float(np.iinfo(np.int32).min + 1)
"""The INT32 range onnxruntime checks a bias against before raising the weight scale."""
FLOAT32_TINY = float(np.finfo(np.float32).tiny)
WEIGHT_QMAX = {False: 127, True: 64}
"""The largest |INT8 weight| of onnxruntime's symmetric quantization, by ``reduce_range`` (its range for 7-bit
weights is -64..64)."""


@dataclass(frozen=True)
class Quant:
    """A tensor's quantization: ``q = clip(round(x / scale) + zero_point, qmin, qmax)``."""

    scale: float
    zero_point: int
    qmin: int
    qmax: int
    dtype: str


@dataclass(frozen=True)
class Layer:
    """Where a Conv/Gemm gets its weight: the torch module, the BatchNorm the exporter folded into it, the
    per-channel axis of its INT8 weight (None: the weight stays float) and the scale of its quantized input
    (the INT32 bias is quantized at this scale times the weight's; None: the bias stays float)."""

    module: str
    bn: str | None
    axis: int | None
    input_scale: float | None


@dataclass(frozen=True)
class Step:
    """One node of the graph: its operator, tensor names and attributes; a QuantizeLinear's fixed quantization,
    a Conv/Gemm's :class:`Layer`."""

    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict
    quant: Quant | None = None
    layer: Layer | None = None


def graph_steps(graph: onnx.GraphProto, model: nn.Module, size: int) -> tuple[list[Step], dict[str, torch.Tensor]]:
    """The graph's nodes as steps (the DequantizeLinear of weights and biases dropped: the layers rebuild
    them) and the constants the steps read."""
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    batchnorms = _batchnorms_after(model, size)
    steps, used = [], set()
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type not in OPS and node.op_type not in ("Conv", "Gemm"):
            raise ExportError(f"QAT cannot simulate the {node.op_type} node {node.name!r}")
        quant = layer = None
        inputs = tuple(node.input)
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            quant, inputs = read_quant(node, inits), inputs[:1]
        elif node.op_type in ("Conv", "Gemm"):
            layer, inputs = _layer(node, attrs, inits, producer, model, batchnorms), inputs[:1]
        used.update(i for i in inputs if i in inits)
        steps.append(Step(node.op_type, inputs, tuple(node.output), attrs, quant, layer))
    return steps, {name: torch.tensor(inits[name]) for name in sorted(used)}  # torch's aligned memory


def read_quant(node: onnx.NodeProto, inits: dict[str, np.ndarray]) -> Quant:
    """A QuantizeLinear node's quantization (per tensor, 8-bit); ExportError for any other."""
    scale, zero_point = inits.get(node.input[1]), inits.get(node.input[2]) if len(node.input) > 2 else None
    if scale is None or zero_point is None or scale.size != 1 or zero_point.dtype not in (np.uint8, np.int8):
        raise ExportError(f"QAT simulates per-tensor 8-bit activation quantization only ({node.name!r})")
    info = np.iinfo(zero_point.dtype)
    return Quant(float(scale), int(zero_point), int(info.min), int(info.max), zero_point.dtype.name)


def _layer(node: onnx.NodeProto, attrs: dict, inits: dict[str, np.ndarray], producer: dict, model: nn.Module,
           batchnorms: dict[str, str]) -> Layer:
    """The source of a Conv/Gemm's weight and bias in ``model``, and how onnxruntime quantized them."""
    if node.op_type == "Conv" and attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise ExportError(f"QAT simulates Conv with explicit pads only ({node.name!r})")
    if node.op_type == "Gemm" and (attrs.get("transA", 0) or not attrs.get("transB", 0)
                                   or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
        raise ExportError(f"QAT simulates Gemm as a Linear layer only ({node.name!r})")
    weight_dq = producer.get(node.input[1])
    quantized = weight_dq is not None and weight_dq.op_type == "DequantizeLinear" and weight_dq.input[0] in inits
    name = weight_dq.input[0].removesuffix("_quantized") if quantized else node.input[1]
    axis = _weight_axis(weight_dq, inits) if quantized else None
    module = name.removesuffix(".weight")
    expected = nn.Conv2d if node.op_type == "Conv" else nn.Linear
    if not name.endswith(".weight") or not isinstance(_submodule(model, module), expected):
        raise ExportError(f"QAT cannot trace the weight {name!r} of {node.name!r} to a {expected.__name__}")
    bias = producer.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    bias_int32 = bias is not None and bias.op_type == "DequantizeLinear" and bias.input[0] in inits
    input_dq = producer.get(node.input[0])
    input_scale = None
    if quantized and input_dq is not None and input_dq.op_type == "DequantizeLinear" and (
            bias_int32 or len(node.input) < 3 or not node.input[2]):
        input_scale = float(inits[input_dq.input[1]])
    bn = batchnorms.get(module)
    if bn is not None and not _submodule(model, bn).affine:
        raise ExportError(f"QAT folds affine BatchNorm only ({bn!r})")
    return Layer(module, bn, axis, input_scale)


def _weight_axis(dq: onnx.NodeProto, inits: dict[str, np.ndarray]) -> int:
    scale, zero_point = inits[dq.input[1]], inits[dq.input[2]]
    if scale.ndim != 1 or zero_point.dtype != np.int8 or zero_point.any():
        raise ExportError(f"QAT simulates per-channel symmetric INT8 weights only ({dq.name!r})")
    return next((a.i for a in dq.attribute if a.name == "axis"), 1)


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _batchnorms_after(model: nn.Module, size: int) -> dict[str, str]:
    """Each Conv2d/Linear whose output goes straight into a BatchNorm (the pairs torch's exporter folds), traced
    by hooks on one forward pass."""
    outputs, pairs, kept = {}, {}, []

    def layer_hook(name):
        def hook(module, args, output):
            outputs[id(output)] = name
            kept.append(output)
        return hook

    def bn_hook(name):
        def hook(module, args):
            if id(args[0]) in outputs:
                pairs[outputs[id(args[0])]] = name
        return hook

    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            handles.append(module.register_forward_hook(layer_hook(name)))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            handles.append(module.register_forward_pre_hook(bn_hook(name)))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size))
    finally:
        for handle in handles:
            handle.remove()
    return pairs


def _float_weights(model: nn.Module, layer: Layer) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The layer's float weight and bias as the exported graph holds them: BatchNorm folded as onnxscript's
    FuseBatchNormIntoConv folds it, in float32: ``gamma / sqrt(var + eps)`` (the square root taken in float64 and
    rounded, as numpy's is exact and torch's float32 one is not always)."""
    module = model.get_submodule(layer.module)
    weight, bias = module.weight, module.bias
    if layer.bn is None:
        return weight, bias
    bn = model.get_submodule(layer.bn)
    scale = bn.weight / torch.sqrt((bn.running_var + bn.eps).double()).float()
    weight = weight * scale.reshape(-1, *[1] * (weight.dim() - 1))
    bias = ((bias if bias is not None else 0.0) - bn.running_mean) * scale + bn.bias
    return weight, bias


def quantized_weights(model: nn.Module, layer: Layer, reduce_range: bool) -> tuple[
        torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The layer's weight and bias as onnxruntime quantizes them (7-bit weights with ``reduce_range``),
    dequantized, with straight-through gradients, and the weight's scale (None for a float weight)."""
    weight, bias = _float_weights(model, layer)
    if layer.axis is None:
        return weight, bias, None
    scale = weight_scale(weight, layer.axis, reduce_range)
    if bias is not None and layer.input_scale is not None:
        scale = _bias_adjusted_scale(scale, bias, layer.input_scale)
    shape = [-1 if d == layer.axis else 1 for d in range(weight.dim())]
    qmax = WEIGHT_QMAX[reduce_range]
    q = torch.clamp(torch.round(weight.detach() / scale.reshape(shape)), -qmax, qmax)
    weight = weight + (q * scale.reshape(shape) - weight).detach()
    if bias is not None and layer.input_scale is not None:
        bias_scale = scale * layer.input_scale
        q = torch.round(bias.detach().double() / bias_scale.double()).clamp(-2.0 ** 31, 2.0 ** 31 - 1)
        bias = bias + (q.float() * bias_scale - bias).detach()
    return weight, bias, scale


def weight_scale(weight: torch.Tensor, axis: int, reduce_range: bool = False) -> torch.Tensor:
    """onnxruntime's symmetric INT8 scale per channel (``compute_scale_zp``): ``2 max|w| / 254`` (``/ 128`` for
    7-bit weights) in float64, stored as float32, 1 where that is below float32's smallest normal."""
    dims = [d for d in range(weight.dim()) if d != axis]
    w = weight.detach()
    absmax = torch.maximum(w.amin(dims).clamp(max=0).abs(), w.amax(dims).clamp(min=0))
    scale = (2 * absmax.double()) / (2 * WEIGHT_QMAX[reduce_range])
    return torch.where(scale < FLOAT32_TINY, torch.ones_like(scale), scale).float()


def _bias_adjusted_scale(scale: torch.Tensor, bias: torch.Tensor, input_scale: float) -> torch.Tensor:
    """onnxruntime's ``_adjust_weight_scale_for_int32_bias`` (per channel): the weight scale raised where the
    INT32 bias at ``input_scale * scale`` would overflow."""
    smallest = 1.0001 * (2.0 * bias.detach().double().abs()) / INT32_RANGE
    candidate = input_scale * scale.double()
    too_small = (candidate < smallest) & (candidate > 0)
    raised = (scale.double() * (smallest / torch.where(too_small, candidate, torch.ones_like(candidate)))).float()
    return torch.where(too_small, raised, scale)


def layer_forward(model: nn.Module, step: Step, x: torch.Tensor, reduce_range: bool) -> torch.Tensor:
    """A Conv/Gemm step computed with the weight and bias :func:`quantized_weights` rebuilds from ``model``."""
    weight, bias, _ = quantized_weights(model, step.layer, reduce_range)
    a = step.attrs
    if step.op != "Conv":
        return F.linear(x, weight, bias)
    pads = a.get("pads", [0, 0, 0, 0])
    x = F.pad(x, [pads[1], pads[3], pads[0], pads[2]])
    return F.conv2d(x, weight, bias, a.get("strides", 1), 0, a.get("dilations", 1), a.get("group", 1))


def _fake_quantize(step: Step, x: torch.Tensor) -> torch.Tensor:
    """QuantizeLinear: the integer value (held as float), rounding half to even; the gradient passes straight
    through inside the representable range and is zero where it saturates."""
    q = step.quant
    r = torch.clamp(x / q.scale, q.qmin - q.zero_point, q.qmax - q.zero_point)
    return r + (torch.round(r) - r).detach() + q.zero_point


def _dequantize(step: Step, q: torch.Tensor) -> torch.Tensor:
    return (q - step.quant.zero_point) * step.quant.scale


def _pool_args(step: Step) -> dict:
    a = step.attrs
    pads = a.get("pads", [0, 0, 0, 0])
    if pads[:2] != pads[2:] or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise ExportError(f"QAT simulates symmetric explicit pool padding only ({step.outputs[0]!r})")
    return {"kernel_size": a["kernel_shape"], "stride": a.get("strides", 1), "padding": pads[:2],
            "ceil_mode": bool(a.get("ceil_mode", 0))}


def _max_pool(step: Step, x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, dilation=step.attrs.get("dilations", 1), **_pool_args(step))


def _avg_pool(step: Step, x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, count_include_pad=bool(step.attrs.get("count_include_pad", 0)), **_pool_args(step))


def _reduce_mean(step: Step, x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
    dims = axes.tolist() if axes is not None else step.attrs.get("axes", list(range(x.dim())))
    return x.mean(dim=dims, keepdim=bool(step.attrs.get("keepdims", 1)))


def _reshape(step: Step, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    dims = shape.tolist()
    if step.attrs.get("allowzero", 0) and 0 in dims:
        raise ExportError(f"QAT cannot simulate a Reshape to an empty dimension ({step.outputs[0]!r})")
    return x.reshape([x.shape[i] if d == 0 else d for i, d in enumerate(dims)])


def _clip(step: Step, x: torch.Tensor, low: torch.Tensor | None = None,
          high: torch.Tensor | None = None) -> torch.Tensor:
    return torch.clamp(x, None if low is None else float(low), None if high is None else float(high))


def _hard_sigmoid(step: Step, x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(step.attrs.get("alpha", 0.2) * x + step.attrs.get("beta", 0.5), 0, 1)


OPS = {
    "QuantizeLinear": _fake_quantize,
    "DequantizeLinear": _dequantize,
    "Relu": lambda s, x: torch.relu(x),
    "Clip": _clip,
    "Sigmoid": lambda s, x: torch.sigmoid(x),
    "HardSigmoid": _hard_sigmoid,
    "HardSwish": lambda s, x: F.hardswish(x),
    "Tanh": lambda s, x: torch.tanh(x),
    "Add": lambda s, a, b: a + b,
    "Sub": lambda s, a, b: a - b,
    "Mul": lambda s, a, b: a * b,
    "Div": lambda s, a, b: a / b,
    "MaxPool": _max_pool,
    "AveragePool": _avg_pool,
    "GlobalAveragePool": lambda s, x: x.mean(dim=(2, 3), keepdim=True),
    "ReduceMean": _reduce_mean,
    "Reshape": _reshape,
    "Flatten": lambda s, x: x.flatten(s.attrs.get("axis", 1)) if s.attrs.get("axis", 1) else x.reshape(1, -1),
    "Concat": lambda s, *xs: torch.cat(xs, dim=s.attrs["axis"]),
    "Identity": lambda s, x: x,
}
