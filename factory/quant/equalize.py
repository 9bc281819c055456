"""Cross-layer equalization and bias correction of an ONNX classifier before static INT8 (Nagel et al. 2019,
"Data-Free Quantization Through Weight Equalization and Bias Correction").

Per-channel INT8 gives each output channel of a convolution its own weight scale, but the activations
between two convolutions share one per-tensor scale, and depthwise convolutions have wildly different
ranges from channel to channel. Equalization rescales each channel ``i`` of a convolution's output by
``1/s_i`` and the next convolution's matching input weights by ``s_i`` (exact through ReLU, which is
positively homogeneous), with ``s_i = sqrt(r1_i / r2_i)`` so both weight ranges become ``sqrt(r1_i r2_i)``.
ReLU6 is not homogeneous: as in the paper, a pair joined by ``Clip(0, 6)`` is equalized after the clip is
replaced by ReLU, which changes the float model wherever an activation exceeded 6 (the export stage judges
every attempt against the original FP32 model, so that change is measured, not assumed away). Bias
correction then measures, on calibration images, how far quantizing each Conv and Gemm weight moves that
layer's output on average per channel (the layer fed its float input), and subtracts that from its bias.

Written here rather than taken from AIMET: aimet-onnx 2.42 installs with the factory's pinned stack, but
on the graphs torch's dynamo exporter writes it finds 2 of mobilenetv2_100's equalizable sets (it does
not recognise ReLU6 exported as ``Clip`` with bound inputs), changed that model's float output by 0.35
without equalizing it, and its bias correction exists only in aimet-torch, against its own simulator
rather than onnxruntime's kernels. NVIDIA ModelOpt's ONNX quantization has no equalization.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

MAX_SWEEPS = 20
"""Equalization repeats over every pair until the scales settle (a depthwise conv sits in two pairs)."""
SETTLED = 1e-3


@dataclass(frozen=True)
class _Pair:
    first: onnx.NodeProto
    second: onnx.NodeProto
    clip: onnx.NodeProto | None
    """A ReLU6-like Clip between them, replaced by ReLU when the pair is equalized."""


@dataclass
class Equalized:
    """What :func:`equalize` changed."""

    pairs: int
    relu6_replaced: int


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    uses = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            uses[name].append(node)
    return uses


def _scalar(inits: dict[str, onnx.TensorProto], name: str) -> float | None:
    tensor = inits.get(name)
    return float(numpy_helper.to_array(tensor).item()) if tensor is not None and math.prod(tensor.dims) == 1 else None


def _attribute(node: onnx.NodeProto, name: str, default):
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def equalizable_pairs(graph: onnx.GraphProto, through_relu6: bool) -> list[_Pair]:
    """Conv pairs whose channels can be rescaled: the first conv's output feeds only the second conv,
    directly, through a ReLU or (``through_relu6``) through a ``Clip`` from 0, and neither shares its
    weights with another node."""
    inits = {i.name: i for i in graph.initializer}
    uses, outputs = _consumers(graph), {o.name for o in graph.output}
    weight_uses = defaultdict(int)
    for node in graph.node:
        for name in node.input:
            weight_uses[name] += name in inits

    def only_consumer(tensor: str) -> onnx.NodeProto | None:
        return uses[tensor][0] if len(uses[tensor]) == 1 and tensor not in outputs else None

    def own_weights(node: onnx.NodeProto | None) -> bool:
        return (node is not None and node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in inits
                and all(weight_uses[name] == 1 for name in node.input[1:] if name))

    pairs = []
    for first in (n for n in graph.node if own_weights(n)):
        tensor, clip = first.output[0], None
        link = only_consumer(tensor)
        clips_from_zero = through_relu6 and link is not None and link.op_type == "Clip" and \
            len(link.input) > 1 and _scalar(inits, link.input[1]) == 0
        if link is not None and (link.op_type == "Relu" or clips_from_zero):
            clip = link if clips_from_zero else None
            tensor = link.output[0]
            link = only_consumer(tensor)
        if own_weights(link) and link.input[0] == tensor:
            pairs.append(_Pair(first, link, clip))
    return pairs


def _input_ranges(weight: np.ndarray, groups: int) -> np.ndarray:
    """The largest |weight| feeding from each input channel of a (grouped) convolution."""
    out, per_group = weight.shape[0], weight.shape[1]
    grouped = np.abs(weight).reshape(groups, out // groups, per_group, -1)
    return grouped.max(axis=(1, 3)).reshape(-1)


def _scale_inputs(weight: np.ndarray, groups: int, scales: np.ndarray) -> np.ndarray:
    out, per_group = weight.shape[0], weight.shape[1]
    grouped = weight.reshape(groups, out // groups, per_group, -1) * scales.reshape(groups, 1, per_group, 1)
    return grouped.reshape(weight.shape)


def _equalize_once(arrays: dict[str, np.ndarray], pair: _Pair) -> float:
    """Equalize one pair in ``arrays`` (initializer values by name); the largest relative scale applied."""
    w1, w2 = arrays[pair.first.input[1]], arrays[pair.second.input[1]]
    r1 = np.abs(w1).reshape(w1.shape[0], -1).max(1)
    r2 = _input_ranges(w2, _attribute(pair.second, "group", 1))
    usable = (r1 > 0) & (r2 > 0)
    scales = np.where(usable, np.sqrt(np.where(usable, r1, 1) / np.where(usable, r2, 1)), 1.0).astype(w1.dtype)
    arrays[pair.first.input[1]] = w1 / scales.reshape(-1, *[1] * (w1.ndim - 1))
    if len(pair.first.input) > 2 and pair.first.input[2]:
        arrays[pair.first.input[2]] = arrays[pair.first.input[2]] / scales
    arrays[pair.second.input[1]] = _scale_inputs(w2, _attribute(pair.second, "group", 1), scales)
    return float(np.abs(np.log(scales)).max()) if len(scales) else 0.0


def equalize(model: onnx.ModelProto, through_relu6: bool = False) -> Equalized:
    """Cross-layer equalization of ``model`` in place (BatchNorm already folded into the convolutions, as
    onnxruntime's ``quant_pre_process`` leaves it): every pair of :func:`equalizable_pairs`, swept until
    the scales settle. Exact unless ``through_relu6``: then ReLU6-like clips between pairs become ReLU."""
    graph = model.graph
    pairs = equalizable_pairs(graph, through_relu6)
    names = {name for p in pairs for node in (p.first, p.second) for name in node.input[1:] if name}
    inits = {i.name: i for i in graph.initializer if i.name in names}
    arrays = {name: numpy_helper.to_array(tensor).copy() for name, tensor in inits.items()}
    for _ in range(MAX_SWEEPS):
        if max((_equalize_once(arrays, p) for p in pairs), default=0.0) < SETTLED:
            break
    for name, tensor in inits.items():
        tensor.CopyFrom(numpy_helper.from_array(arrays[name], name))
    for clip in {id(p.clip): p.clip for p in pairs if p.clip is not None}.values():
        clip.op_type = "Relu"
        del clip.input[1:]
    return Equalized(len(pairs), sum(p.clip is not None for p in pairs))


def has_relu6_pairs(model: onnx.ModelProto) -> bool:
    """Whether equalizing through ReLU6 would reach pairs that exact equalization cannot."""
    return any(p.clip is not None for p in equalizable_pairs(model.graph, through_relu6=True))


CORRECTED_OPS = ("Conv", "Gemm")


def _mean_outputs(model: onnx.ModelProto, tensors: list[str], batches: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Each named tensor averaged per channel (axis 1) over ``batches``, the graph run as written."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in tensors)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    sums: dict[str, np.ndarray] = {}
    for batch in batches:
        for name, value in zip(tensors, session.run(tensors, {"input": batch}), strict=True):
            axes = tuple(a for a in range(value.ndim) if a != 1)
            sums[name] = sums.get(name, 0) + value.astype(np.float64).mean(axis=axes) * len(batch)
    count = sum(len(b) for b in batches)
    return {name: total / count for name, total in sums.items()}


def file_tensor(name: str, inits: dict[str, np.ndarray], producers: dict[str, onnx.NodeProto]) -> np.ndarray:
    """A graph tensor that is an initializer, or the DequantizeLinear of one, as onnxruntime computes it
    (float32 ``(q - zero_point) * scale``, per channel along the node's axis)."""
    dq = producers.get(name)
    if dq is None:
        return inits[name]
    q = inits[dq.input[0]].astype(np.float32)
    axis = _attribute(dq, "axis", 1) % q.ndim

    def per_channel(value: np.ndarray) -> np.ndarray:
        return value if value.ndim == 0 else np.expand_dims(value, tuple(d for d in range(q.ndim) if d != axis))

    zero = per_channel(inits[dq.input[2]].astype(np.float32)) if len(dq.input) > 2 and dq.input[2] else 0
    return (q - zero) * per_channel(inits[dq.input[1]])


def _dequantized_weights(quantized: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The weight each Conv/Gemm of ``quantized`` computes with (the DequantizeLinear of its INT8
    initializer), by node name."""
    inits = {i.name: numpy_helper.to_array(i) for i in quantized.graph.initializer}
    producers = {out: node for node in quantized.graph.node for out in node.output}

    def quantized_weight(node: onnx.NodeProto) -> bool:
        dq = producers.get(node.input[1])
        return dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits

    return {node.name: file_tensor(node.input[1], inits, producers) for node in quantized.graph.node
            if node.op_type in CORRECTED_OPS and quantized_weight(node)}


def _weight_error_probe(model: onnx.ModelProto, errors: dict[str, np.ndarray]) -> tuple[onnx.ModelProto, list[str]]:
    """``model`` with a bias-free copy of each Conv/Gemm named in ``errors`` that applies that weight error to
    the same float input; and the copies' outputs, in ``model``'s node order."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = []
    for node in model.graph.node:
        if node.name not in errors:
            continue
        weight, output = f"{node.name}_weight_error", f"{node.name}_weight_error_output"
        probe.graph.initializer.append(numpy_helper.from_array(errors[node.name], weight))
        copy = onnx.helper.make_node(node.op_type, [node.input[0], weight], [output], name=f"{node.name}_error")
        copy.attribute.extend(node.attribute)
        probe.graph.node.append(copy)
        outputs.append(output)
    return probe, outputs


def correct_biases(model: onnx.ModelProto, quantized: onnx.ModelProto, batches: list[np.ndarray]) -> int:
    """Empirical bias correction of ``model`` in place: each Conv/Gemm whose weight ``quantized`` (``model``
    quantized to QDQ, node names kept) quantizes gets its bias lowered by the mean shift per output channel
    that quantizing its weight causes, measured on ``batches`` with the layer's float input. Measured on
    float inputs, a layer's shift leaves out what earlier layers' errors add to it, which their own
    corrections remove (measured in the quantized model instead, every error is corrected again in each
    layer after it: on flowers12 that cost efficientnet_b0 10-16 points). Returns how many biases changed."""
    fp32 = {n.name: n for n in model.graph.node}
    inits = {i.name: i for i in model.graph.initializer}
    errors = {name: weight - numpy_helper.to_array(inits[fp32[name].input[1]])
              for name, weight in _dequantized_weights(quantized).items()
              if name in fp32 and fp32[name].input[1] in inits}
    probe, outputs = _weight_error_probe(model, errors)
    shifts = _mean_outputs(probe, outputs, batches)
    nodes = [node for node in model.graph.node if node.name in errors]
    for node, output in zip(nodes, outputs, strict=True):
        _set_bias(model.graph, inits, node, shifts[output])
    return len(nodes)


def _set_bias(graph: onnx.GraphProto, inits: dict[str, onnx.TensorProto], node: onnx.NodeProto,
              shift: np.ndarray) -> None:
    if len(node.input) > 2 and node.input[2] in inits:
        tensor = inits[node.input[2]]
        tensor.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(tensor) - shift).astype(np.float32),
                                                tensor.name))
        return
    name = f"{node.name}_corrected_bias"
    graph.initializer.append(numpy_helper.from_array((-shift).astype(np.float32), name))
    while len(node.input) < 3:
        node.input.append("")
    node.input[2] = name
