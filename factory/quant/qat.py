"""Quantization-aware training (QAT) that simulates, in torch, the static INT8 model onnxruntime runs.

:func:`simulate_int8` quantizes the model with the factory's own static INT8 pipeline
(:func:`factory.quant.quantizers.quantize_static_int8`) and turns the QDQ graph it produces into a trainable
module, :class:`QuantSim`, that interprets that graph node by node (:mod:`factory.quant.qdq_graph`). Every QuantizeLinear/DequantizeLinear
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
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationMethod, quantize_static
from onnxruntime.quantization.quant_utils import QUANT_INPUT_SUFFIX
from torch import nn

from factory.files import atomic_path
from factory.quant.equalize import file_tensor
from factory.errors import ExportError
from factory.onnx_tools import export_onnx, set_metadata
from factory.quant.quantizers import (
    Calibration,
    pre_process,
    quantize_static_int8,
    quiet_quantizer,
    static_int8_options,
)
from factory.quant.qdq_graph import OPS, Quant, graph_steps, layer_forward, quantized_weights, read_quant
from factory.runtime.session import make_session

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
        self.steps, constants = graph_steps(graph, model, size)
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

    def activation_quant(self) -> dict[str, Quant]:
        """Each quantized activation (QuantizeLinear input) and its fixed quantization."""
        return {s.inputs[0]: s.quant for s in self.steps if s.op == "QuantizeLinear"}

    def _run(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        env = {name: getattr(self, f"_constant{i}") for i, name in enumerate(self._constant_names)}
        env[self.input_name] = x
        for step in self.steps:
            args = [env[name] if name else None for name in step.inputs]
            if step.layer is not None:
                env[step.outputs[0]] = layer_forward(self.model, step, args[0], self.reduce_range)
            else:
                env[step.outputs[0]] = OPS[step.op](step, *args)
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
            weight, bias, _ = quantized_weights(sim.model, step.layer, sim.reduce_range)
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
    quantized = {n.input[0]: read_quant(n, inits) for n in graph.node if n.op_type == "QuantizeLinear"}
    if quantized != sim.activation_quant():
        changed = sorted(set(quantized.items()) ^ set(sim.activation_quant().items()), key=str)
        raise ExportError(f"QAT export quantized other activations than the simulation: {changed[:4]}")
    ops = sorted((n.op_type, n.output[0]) for n in graph.node
                 if not (n.op_type == "DequantizeLinear" and n.input[0] in inits))
    if ops != sorted((s.op, s.outputs[0]) for s in sim.steps):
        raise ExportError("QAT export has another graph than the simulation")
