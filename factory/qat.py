"""Quantization-aware training (QAT) that simulates, in torch, the static INT8 model onnxruntime runs.

:func:`simulate_int8` quantizes the model with the factory's own static INT8 pipeline
(:func:`factory.onnx_tools.quantize_static_int8`) and turns the QDQ graph it produces into a trainable
module, :class:`QuantSim`, that interprets that graph node by node. Every QuantizeLinear/DequantizeLinear
therefore sits exactly where onnxruntime put it (the Relu/Clip it removed and left to the quantization of
their output, the Sigmoid output inside SiLU, the pooled features, the logits), and activations use the
file's scales and zero points, fixed. Weights are not read from the file: every forward rebuilds each
Conv/Gemm weight from the torch model's own parameters, with BatchNorm folded in as torch's ONNX exporter
folds it (running statistics frozen), quantizes it per output channel, symmetric INT8, as onnxruntime
computes it (full range, or 7-bit with ``reduce_range``; its scale raised where an INT32 bias would overflow),
and quantizes the bias to INT32 at
input scale times weight scale. Gradients pass straight through the rounding (and are zero where an
activation saturates), so training ``sim`` trains the model's parameters (conv weights, BatchNorm affine,
classifier).

The simulation computes in float what onnxruntime's QDQ reference computes (the graph run unoptimized),
which is what its INT8 kernels compute on arm64 and on x86 with VNNI, up to values that round to the
neighbouring integer because sums are taken in another order. On x86 without VNNI onnxruntime's UINT8 x INT8
kernels add pairs of products in 16 bits with saturation, which full-range weights can overflow
(:func:`int8_conv_exact` tells whether this host's do); with 7-bit weights (``reduce_range``, the x86-avx2
profile's choice) they cannot, so the simulation is what those kernels compute too.

:func:`export_qat` exports the trained model again and quantizes it with every activation's scale and
zero point forced to the simulation's (onnxruntime's ``TensorQuantOverrides``), then checks that the file
quantizes the same tensors with the same parameters. :func:`qat_parity` compares that file, run by
onnxruntime (its INT8 kernels and its QDQ reference), with the simulation.
"""

from __future__ import annotations

import functools
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationMethod, quantize_static
from onnxruntime.quantization.quant_utils import QUANT_INPUT_SUFFIX
from torch import nn

from factory.files import atomic_path
from factory.equalize import file_tensor
from factory.errors import ExportError
from factory.onnx_tools import (
    Calibration,
    export_onnx,
    pre_process,
    quantize_static_int8,
    quiet_quantizer,
    set_metadata,
    static_int8_options,
)
from factory.runtime.session import make_session

INT32_RANGE = float(np.iinfo(np.int32).max) - float(np.iinfo(np.int32).min + 1)
"""The INT32 range onnxruntime checks a bias against before raising the weight scale."""
FLOAT32_TINY = float(np.finfo(np.float32).tiny)
WEIGHT_QMAX = {False: 127, True: 64}
"""The largest |INT8 weight| of onnxruntime's symmetric quantization, by ``reduce_range`` (its range for 7-bit
weights is -64..64)."""


@dataclass(frozen=True)
class _Quant:
    """A tensor's quantization: ``q = clip(round(x / scale) + zero_point, qmin, qmax)``."""

    scale: float
    zero_point: int
    qmin: int
    qmax: int
    dtype: str


@dataclass(frozen=True)
class _Layer:
    """Where a Conv/Gemm gets its weight: the torch module, the BatchNorm the exporter folded into it, the
    per-channel axis of its INT8 weight (None: the weight stays float) and the scale of its quantized input
    (the INT32 bias is quantized at this scale times the weight's; None: the bias stays float)."""

    module: str
    bn: str | None
    axis: int | None
    input_scale: float | None


@dataclass(frozen=True)
class _Step:
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict
    quant: _Quant | None = None
    layer: _Layer | None = None


class QuantSim(nn.Module):
    """``model`` as onnxruntime's static INT8 QDQ model computes it, differentiable: ``forward(x)`` gives the
    logits, :meth:`pooled_and_logits` also the (quantized) features the classifier reads. Its parameters
    are ``model``'s; BatchNorm running statistics and activation quantization are frozen. ``reduce_range``:
    7-bit weights, as onnxruntime quantizes them with that option."""

    def __init__(self, model: nn.Module, graph: onnx.GraphProto, size: int, opset: int, exclude: list[str],
                 reduce_range: bool = False):
        super().__init__()
        self.model, self.size, self.opset, self.exclude = model, size, opset, exclude
        self.reduce_range = reduce_range
        self.steps, constants = _steps(graph, model, size)
        self.input_name, self.output_name = graph.input[0].name, graph.output[0].name
        self._constant_names = list(constants)
        for i, tensor in enumerate(constants.values()):
            self.register_buffer(f"_constant{i}", tensor, persistent=False)
        classifiers = [s for s in self.steps if s.op == "Gemm"]
        self.pooled_name = classifiers[-1].inputs[0] if classifiers else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)[self.output_name]

    def pooled_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The features the classifier (the last Gemm) reads, as quantized by onnxruntime, and the logits."""
        if self.pooled_name is None:
            raise ExportError("the quantized graph has no Gemm classifier to read pooled features from")
        env = self._run(x)
        return env[self.pooled_name], env[self.output_name]

    def activation_quant(self) -> dict[str, _Quant]:
        """Each quantized activation (QuantizeLinear input) and its fixed quantization."""
        return {s.inputs[0]: s.quant for s in self.steps if s.op == "QuantizeLinear"}

    def _run(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        env = {name: getattr(self, f"_constant{i}") for i, name in enumerate(self._constant_names)}
        env[self.input_name] = x
        for step in self.steps:
            args = [env[name] if name else None for name in step.inputs]
            if step.layer is not None:
                env[step.outputs[0]] = _layer_forward(self.model, step, args[0], self.reduce_range)
            else:
                env[step.outputs[0]] = _OPS[step.op](step, *args)
        return env


def simulate_int8(model: nn.Module, size: int, calibration: list[np.ndarray], work: Path, *,
                  method: str = "minmax", exclude: list[str] | None = None, reduce_range: bool = False,
                  opset: int = 18) -> QuantSim:
    """A trainable simulation of ``model`` quantized to static INT8 by the factory (calibrated with ``method``
    on ``calibration``, the ``exclude`` nodes kept in float, 7-bit weights with ``reduce_range``); its float and
    QDQ files (``fp32.onnx``, ``int8.onnx``) go to ``work``.
    ``model`` is left on the CPU, in eval mode. Raises ExportError when the QDQ graph holds something the
    simulation cannot reproduce, or its weights cannot be rebuilt from ``model``."""
    work.mkdir(parents=True, exist_ok=True)
    fp32, qdq = work / "fp32.onnx", work / "int8.onnx"
    export_onnx(model, types.SimpleNamespace(size=size), fp32, {}, opset)
    quantize_static_int8(fp32, qdq, calibration, method, list(exclude or []), reduce_range=reduce_range)
    graph = onnx.load(str(qdq)).graph
    sim = QuantSim(model, graph, size, opset, list(exclude or []), reduce_range)
    _check_weights(sim, graph)
    return sim


def export_qat(sim: QuantSim, path: Path, opset: int = 18, metadata: dict[str, str] | None = None) -> None:
    """Write ``sim``'s model to ``path`` as a static INT8 QDQ file with the simulation's activation scales and
    zero points (not recalibrated) and ``metadata``. Raises ExportError when onnxruntime quantized other
    tensors, or with other parameters, than the simulation. ``sim`` stays on its device, in eval mode."""
    device = _device(sim)
    with atomic_path(path, ".onnx") as out, tempfile.TemporaryDirectory(dir=path.parent, prefix=".qat-") as tmp:
        fp32, pre = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx"
        export_onnx(sim.model, types.SimpleNamespace(size=sim.size), fp32, {}, opset)
        sim.to(device)
        zeros = np.zeros((1, 3, sim.size, sim.size), np.float32)
        with quiet_quantizer():
            pre_process(fp32, pre)
            quantize_static(str(pre), str(out), Calibration([zeros]), **static_int8_options(
                CalibrationMethod.MinMax, sim.exclude, sim.reduce_range, _overrides(sim)))
        proto = onnx.load(str(out))
        _check_placement(sim, proto.graph)
        set_metadata(proto, {**(metadata or {}), "precision": "int8"})
        onnx.save(proto, str(out))


def qat_parity(sim: QuantSim, path: Path, images: np.ndarray) -> dict:
    """The QDQ file at ``path`` run by onnxruntime against ``sim`` on ``images`` (float32 NCHW): the largest
    |logit difference| (also in steps of the logits' quantization) and top-1 agreement, for onnxruntime's INT8
    kernels (``max_abs_diff``, ``max_diff_steps``, ``top1_agreement``) and for its QDQ reference, the graph run
    unoptimized (``reference_...``); ``int8_conv_exact``: whether this host's INT8 convolution is exact for
    full-range weights (:func:`int8_conv_exact`; where it is not, its kernels match ``sim`` only with
    ``sim.reduce_range``)."""
    x = images.astype(np.float32)
    with torch.no_grad():
        expected = sim(torch.tensor(x, device=_device(sim))).cpu().numpy()
    step = sim.activation_quant().get(_quantized_output(sim))
    result = {"images": len(images), "int8_conv_exact": int8_conv_exact()}
    for prefix, optimize in (("", True), ("reference_", False)):
        got = make_session(path, 1, optimize=optimize).run(None, {"input": x})[0]
        diff = float(np.abs(expected - got).max())
        result |= {f"{prefix}max_abs_diff": diff, f"{prefix}max_diff_steps": diff / step.scale if step else None,
                   f"{prefix}top1_agreement": float((expected.argmax(1) == got.argmax(1)).mean())}
    return result


def _device(sim: QuantSim) -> torch.device:
    return next(sim.model.parameters()).device


@functools.cache
def int8_conv_exact() -> bool:
    """Whether onnxruntime's INT8 convolution (QLinearConv, UINT8 activations, INT8 weights) on this host gives
    what its QDQ definition gives for full-range values. On x86 without VNNI it does not: MLAS multiplies
    UINT8 by INT8 with VPMADDUBSW, whose sums of two products saturate at 16 bits (255 * 127 * 2 > 32767)."""
    h = onnx.helper
    consts = [numpy_helper.from_array(np.array(v, dtype=t), n) for n, v, t in (
        ("one", 1.0, np.float32), ("zero", 0, np.uint8), ("out_scale", 10000.0, np.float32),
        ("w", np.full((16, 8, 3, 3), 127), np.int8), ("w_scale", np.ones(16), np.float32),
        ("w_zero", np.zeros(16), np.int8))]
    nodes = [h.make_node("QuantizeLinear", ["x", "one", "zero"], ["xq"]),
             h.make_node("DequantizeLinear", ["xq", "one", "zero"], ["xd"]),
             h.make_node("DequantizeLinear", ["w", "w_scale", "w_zero"], ["wd"], axis=0),
             h.make_node("Conv", ["xd", "wd"], ["y"], pads=[1, 1, 1, 1]),
             h.make_node("QuantizeLinear", ["y", "out_scale", "zero"], ["yq"]),
             h.make_node("DequantizeLinear", ["yq", "out_scale", "zero"], ["out"])]
    graph = h.make_graph(nodes, "probe", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8, 6, 6])],
                         [h.make_tensor_value_info("out", onnx.TensorProto.FLOAT, None)], consts)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 18)]).SerializeToString()
    x = {"x": np.full((1, 8, 6, 6), 255, np.float32)}
    kernels, reference = (make_session(model, 1, optimize=o).run(None, x)[0] for o in (True, False))
    return bool(np.array_equal(kernels, reference))


def _quantized_output(sim: QuantSim) -> str | None:
    producer = {s.outputs[0]: s for s in sim.steps}
    dq = producer.get(sim.output_name)
    if dq is None or dq.op != "DequantizeLinear":
        return None
    return producer[dq.inputs[0]].inputs[0]


def _steps(graph: onnx.GraphProto, model: nn.Module, size: int) -> tuple[list[_Step], dict[str, torch.Tensor]]:
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
        if node.op_type not in _OPS and node.op_type not in ("Conv", "Gemm"):
            raise ExportError(f"QAT cannot simulate the {node.op_type} node {node.name!r}")
        quant = layer = None
        inputs = tuple(node.input)
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            quant, inputs = _quant(node, inits), inputs[:1]
        elif node.op_type in ("Conv", "Gemm"):
            layer, inputs = _layer(node, attrs, inits, producer, model, batchnorms), inputs[:1]
        used.update(i for i in inputs if i in inits)
        steps.append(_Step(node.op_type, inputs, tuple(node.output), attrs, quant, layer))
    return steps, {name: torch.tensor(inits[name]) for name in sorted(used)}  # torch's aligned memory


def _quant(node: onnx.NodeProto, inits: dict[str, np.ndarray]) -> _Quant:
    scale, zero_point = inits.get(node.input[1]), inits.get(node.input[2]) if len(node.input) > 2 else None
    if scale is None or zero_point is None or scale.size != 1 or zero_point.dtype not in (np.uint8, np.int8):
        raise ExportError(f"QAT simulates per-tensor 8-bit activation quantization only ({node.name!r})")
    info = np.iinfo(zero_point.dtype)
    return _Quant(float(scale), int(zero_point), int(info.min), int(info.max), zero_point.dtype.name)


def _layer(node: onnx.NodeProto, attrs: dict, inits: dict[str, np.ndarray], producer: dict, model: nn.Module,
           batchnorms: dict[str, str]) -> _Layer:
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
    return _Layer(module, bn, axis, input_scale)


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


def _float_weights(model: nn.Module, layer: _Layer) -> tuple[torch.Tensor, torch.Tensor | None]:
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


def _quantized_weights(model: nn.Module, layer: _Layer, reduce_range: bool) -> tuple[
        torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The layer's weight and bias as onnxruntime quantizes them (7-bit weights with ``reduce_range``),
    dequantized, with straight-through gradients, and the weight's scale (None for a float weight)."""
    weight, bias = _float_weights(model, layer)
    if layer.axis is None:
        return weight, bias, None
    scale = _weight_scale(weight, layer.axis, reduce_range)
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


def _weight_scale(weight: torch.Tensor, axis: int, reduce_range: bool = False) -> torch.Tensor:
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


def _layer_forward(model: nn.Module, step: _Step, x: torch.Tensor, reduce_range: bool) -> torch.Tensor:
    weight, bias, _ = _quantized_weights(model, step.layer, reduce_range)
    a = step.attrs
    if step.op != "Conv":
        return F.linear(x, weight, bias)
    pads = a.get("pads", [0, 0, 0, 0])
    x = F.pad(x, [pads[1], pads[3], pads[0], pads[2]])
    return F.conv2d(x, weight, bias, a.get("strides", 1), 0, a.get("dilations", 1), a.get("group", 1))


def _fake_quantize(step: _Step, x: torch.Tensor) -> torch.Tensor:
    """QuantizeLinear: the integer value (held as float), rounding half to even; the gradient passes straight
    through inside the representable range and is zero where it saturates."""
    q = step.quant
    r = torch.clamp(x / q.scale, q.qmin - q.zero_point, q.qmax - q.zero_point)
    return r + (torch.round(r) - r).detach() + q.zero_point


def _dequantize(step: _Step, q: torch.Tensor) -> torch.Tensor:
    return (q - step.quant.zero_point) * step.quant.scale


def _pool_args(step: _Step) -> dict:
    a = step.attrs
    pads = a.get("pads", [0, 0, 0, 0])
    if pads[:2] != pads[2:] or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise ExportError(f"QAT simulates symmetric explicit pool padding only ({step.outputs[0]!r})")
    return {"kernel_size": a["kernel_shape"], "stride": a.get("strides", 1), "padding": pads[:2],
            "ceil_mode": bool(a.get("ceil_mode", 0))}


def _max_pool(step: _Step, x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, dilation=step.attrs.get("dilations", 1), **_pool_args(step))


def _avg_pool(step: _Step, x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, count_include_pad=bool(step.attrs.get("count_include_pad", 0)), **_pool_args(step))


def _reduce_mean(step: _Step, x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
    dims = axes.tolist() if axes is not None else step.attrs.get("axes", list(range(x.dim())))
    return x.mean(dim=dims, keepdim=bool(step.attrs.get("keepdims", 1)))


def _reshape(step: _Step, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    dims = shape.tolist()
    if step.attrs.get("allowzero", 0) and 0 in dims:
        raise ExportError(f"QAT cannot simulate a Reshape to an empty dimension ({step.outputs[0]!r})")
    return x.reshape([x.shape[i] if d == 0 else d for i, d in enumerate(dims)])


def _clip(step: _Step, x: torch.Tensor, low: torch.Tensor | None = None,
          high: torch.Tensor | None = None) -> torch.Tensor:
    return torch.clamp(x, None if low is None else float(low), None if high is None else float(high))


def _hard_sigmoid(step: _Step, x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(step.attrs.get("alpha", 0.2) * x + step.attrs.get("beta", 0.5), 0, 1)


_OPS = {
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


def _overrides(sim: QuantSim) -> dict[str, list[dict]]:
    """TensorQuantOverrides forcing the simulation's activation quantization (keyed by the tensor's name before
    quantization: the quantizer renames a quantized graph output's producer to ``<output>_QuantizeLinear_Input``)."""
    return {name.removesuffix(QUANT_INPUT_SUFFIX): [{"scale": np.array(q.scale, np.float32),
                                                     "zero_point": np.array(q.zero_point, q.dtype)}]
            for name, q in sim.activation_quant().items()}


def _check_weights(sim: QuantSim, graph: onnx.GraphProto) -> None:
    """The weights and biases the simulation computes from the model are the file's (INT8 weights and INT32
    biases dequantized, float ones as they are)."""
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    nodes = {tuple(n.output): n for n in graph.node}
    with torch.no_grad():
        for step in (s for s in sim.steps if s.layer is not None):
            node = nodes[step.outputs]
            weight, bias, _ = _quantized_weights(sim.model, step.layer, sim.reduce_range)
            _compare(f"weight of {node.name}", weight.numpy(), file_tensor(node.input[1], inits, producer))
            if len(node.input) > 2 and node.input[2]:
                _compare(f"bias of {node.name}", bias.numpy(), file_tensor(node.input[2], inits, producer))
            elif bias is not None and bias.abs().max() > 0:
                raise ExportError(f"QAT: {node.name} has no bias in the graph but a non-zero one in the model")


def _compare(what: str, got: np.ndarray, expected: np.ndarray) -> None:
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-5, atol=0):
        worst = float(np.abs(got - expected).max()) if got.shape == expected.shape else got.shape
        raise ExportError(f"QAT cannot rebuild the {what} from the model (worst difference {worst})")


def _check_placement(sim: QuantSim, graph: onnx.GraphProto) -> None:
    """The QDQ file quantizes the tensors the simulation quantizes, with the same parameters, and computes
    them with the same operators."""
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    quantized = {n.input[0]: _quant(n, inits) for n in graph.node if n.op_type == "QuantizeLinear"}
    if quantized != sim.activation_quant():
        changed = sorted(set(quantized.items()) ^ set(sim.activation_quant().items()), key=str)
        raise ExportError(f"QAT export quantized other activations than the simulation: {changed[:4]}")
    ops = sorted((n.op_type, n.output[0]) for n in graph.node
                 if not (n.op_type == "DequantizeLinear" and n.input[0] in inits))
    if ops != sorted((s.op, s.outputs[0]) for s in sim.steps):
        raise ExportError("QAT export has another graph than the simulation")
