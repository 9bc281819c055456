"""Cross-layer equalization and bias correction (factory.quant.equalize) and their place among the INT8 remedies."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn

import factory.quant.ladder as ladder
from factory.quant.equalize import _dequantized_weights, correct_biases, equalizable_pairs, equalize, has_relu6_pairs
from factory.onnx_tools import export_onnx
from factory.quant.quantizers import quantize_qdq

SIZE = 16


def _mobile_block(act: type[nn.Module]) -> nn.Module:
    """Pointwise expand, depthwise, pointwise project (MobileNetV2's block), with uneven channel ranges."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 1, bias=False), nn.BatchNorm2d(16), act(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), act(),
        nn.Conv2d(16, 8, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.logspace(-1.5, 1, m.num_features)[torch.randperm(m.num_features)])
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2)
    return model.eval()


def _preprocessed(model: nn.Module, tmp_path, name: str) -> onnx.ModelProto:
    fp32, pre = tmp_path / f"{name}.onnx", tmp_path / f"{name}.pre.onnx"
    export_onnx(model, SimpleNamespace(size=SIZE), fp32, {}, 18)
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    return onnx.load(str(pre))


def _run(model: onnx.ModelProto, images: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"input": images})[0]


def _range_spread(model: onnx.ModelProto) -> list[float]:
    """Per Conv: largest over smallest per-output-channel |weight| range."""
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    spreads = []
    for node in (n for n in model.graph.node if n.op_type == "Conv"):
        ranges = np.abs(inits[node.input[1]]).reshape(inits[node.input[1]].shape[0], -1).max(1)
        spreads.append(float(ranges.max() / ranges.min()))
    return spreads


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, SIZE, SIZE)).astype(np.float32)


def test_equalization_keeps_outputs_and_narrows_weight_ranges(tmp_path):
    model = _preprocessed(_mobile_block(nn.ReLU), tmp_path, "relu")
    images, spread = _images(8), _range_spread(model)
    before = _run(model, images)
    done = equalize(model)
    assert done.pairs == 2 and done.relu6_replaced == 0  # expand-depthwise and depthwise-project
    after = _run(model, images)
    assert np.abs(after - before).max() <= 1e-4 * max(1.0, np.abs(before).max())
    narrowed = _range_spread(model)
    assert narrowed[1] < spread[1] / 2 and max(narrowed) < max(spread)  # the depthwise conv most of all


def test_relu6_pairs_are_equalized_only_when_asked_and_then_become_relu(tmp_path):
    model = _preprocessed(_mobile_block(nn.ReLU6), tmp_path, "relu6")
    assert has_relu6_pairs(model)
    exact = len(equalizable_pairs(model.graph, through_relu6=False))
    images = _images(8) * 0.05  # small inputs: no activation reaches 6, so ReLU6 and ReLU agree
    before = _run(model, images)
    done = equalize(model, through_relu6=True)
    assert done.pairs == exact + 2 and done.relu6_replaced == 2
    assert [n.op_type for n in model.graph.node].count("Clip") == 0
    assert np.abs(_run(model, images) - before).max() <= 1e-4 * max(1.0, np.abs(before).max())


def _with_weights(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """``model`` with each named node's weight replaced: its weights quantized, its activations float."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    inits = {i.name: i for i in copy.graph.initializer}
    for node in (n for n in copy.graph.node if n.name in weights):
        inits[node.input[1]].CopyFrom(onnx.numpy_helper.from_array(weights[node.name], node.input[1]))
    return copy


def test_bias_correction_removes_the_mean_shift_quantized_weights_cause(tmp_path):
    model = _preprocessed(_mobile_block(nn.ReLU), tmp_path, "bias")
    calibration = [_images(16, seed) for seed in range(4)]
    pre, probe = tmp_path / "pre.onnx", tmp_path / "probe.onnx"
    onnx.save(model, str(pre))
    quantize_qdq(pre, probe, calibration, "minmax", [])
    quantized_weights = _dequantized_weights(onnx.load(str(probe)))
    held_out = _images(64, seed=9)
    reference = _run(model, held_out)

    def mean_shift(corrected: onnx.ModelProto) -> float:
        return float(np.abs((_run(_with_weights(corrected, quantized_weights), held_out) - reference).mean(0)).mean())

    before = mean_shift(model)
    assert correct_biases(model, onnx.load(str(probe)), calibration) == 4  # three convs and the classifier
    assert mean_shift(model) < before / 2  # on images the correction was not measured on
    assert np.abs(_run(model, held_out) - reference).max() > 0  # the float model's biases did change


def test_equalization_is_the_remedy_after_plain_quantization(tmp_path, tiny_recipe):
    from test_export import PRE, _plan, _runtime, _spy_quantize

    rt = _runtime(tiny_recipe, tmp_path)
    fp32 = tmp_path / "q" / "model.onnx"
    fp32.parent.mkdir()
    export_onnx(_mobile_block(nn.ReLU6)[:-1].append(nn.Linear(8, 3)).eval(), PRE, fp32, {}, 18)
    tried, tools = _spy_quantize()

    def right_only_when_equalized_through_relu6(file, preprocess, dataset, reference=False):
        scores = ladder.check_scores(file, preprocess, dataset)
        right = file.name == "model.onnx" or tried[-1][1] == "relu6"
        return scores._replace(predictions=scores.labels if right else (scores.labels + 1) % 3)

    result, _ = ladder.accuracy_aware_quantize(rt, _plan("static_int8", 0.01), fp32, PRE,
                                               tools=dataclasses.replace(tools, judge=right_only_when_equalized_through_relu6))
    assert [a.remedy for a in result.attempts] == ["ptq"] * 3 + ["equalized"] * 3 + ["equalized-relu6"]
    assert result.accepted and result.attempts[-1].used and result.attempts[-1].drop == 0.0
    kept = onnx.load(str(fp32.with_name(result.file)))
    assert "QuantizeLinear" in {n.op_type for n in kept.graph.node}
    assert "Clip" not in {n.op_type for n in kept.graph.node}  # the file kept is the equalized one

