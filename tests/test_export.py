"""ONNX export: metadata round-trip, parity with PyTorch, accuracy-aware quantization (paired acceptance on the
validation split, float layers by measured sensitivity) and the validation predictions of each file."""

import dataclasses
import json

import numpy as np
import onnx
import pytest
import torch

from factory.cache import StageCache
from factory.stage import Done
from factory.context import Runtime
from factory.data import Preprocess
from factory.latency import LatencySettings, measure, ratio
from factory.models import create_model, save_trained
from factory.recipe import load_recipe
from factory.sources import load_task_data
from factory.quant.ladder import QuantTools, accuracy_aware_quantize, check_scores
from factory.stages.export import ExportPlan, export_model
from factory.errors import ExportError
from factory.evaluate import parity
from factory.quant.sensitivity import float_layer_cap, layer_nodes, sensitivity_ranking
from factory.onnx_tools import export_onnx, onnx_logits, read_metadata
from factory.quant.quantizers import quantize_static_int8
from factory.quant.results import QatRun
from factory.testing import CLASSES
from factory.train import TrainedModel
from factory.quant.qat import int8_conv_exact

PRE = Preprocess(32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("test_resnet", None, 3).eval()
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    meta = {"classes": json.dumps(["blue", "green", "red"]), "mean": json.dumps(list(PRE.mean)),
            "std": json.dumps(list(PRE.std)), "input_size": json.dumps([3, 32, 32]), "recipe_hash": "abc",
            "teacher": "t", "factory_version": "0"}
    export_onnx(model, PRE, path, meta, opset=18)
    return model, path, meta


def _runtime(tiny_recipe, tmp_path):
    recipe = load_recipe(tiny_recipe)
    return Runtime(load_task_data(recipe.data), StageCache(tmp_path / "cache"), torch.device("cpu"))


def _plan(method, max_drop, calibration="minmax"):
    return ExportPlan(opset=18, parity_atol=1e-3, quantize=method, calibration=calibration if method == "static_int8"
                      else None, calibration_images=8, max_accuracy_drop=max_drop)


def test_metadata_round_trip_and_dynamic_batch(exported):
    model, path, meta = exported
    assert read_metadata(path) == meta
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param  # symbolic batch axis
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path))
    for n in (1, 5):
        assert sess.run(None, {"input": np.zeros((n, 3, 32, 32), np.float32)})[0].shape == (n, 3)


def test_parity_on_real_images(exported, tiny_recipe, tmp_path):
    model, path, _ = exported
    rt = _runtime(tiny_recipe, tmp_path)
    check = parity(model, PRE, path, rt.eval_images("test", PRE))
    assert check["images"] == 12 and check["max_abs_diff"] < 1e-3 and check["top1_agreement"] == 1.0


def _copy(path, folder):
    folder.mkdir(exist_ok=True)
    fp32 = folder / "model.onnx"
    fp32.write_bytes(path.read_bytes())
    return fp32


def _spy_quantize() -> tuple[list[tuple[str | None, str | None]], QuantTools]:
    """Tools whose quantizer records the (calibration method, equalization) of every quantization it makes."""
    calls = []
    real = QuantTools().quantizer

    def spy(method, source, out, calibration, calib_method, exclude, equalization=None, reduce_range=False):
        calls.append((calib_method, equalization))
        real(method, source, out, calibration, calib_method, exclude, equalization, reduce_range)

    return calls, QuantTools(quantizer=spy)


def _spy_ranking() -> tuple[list[list[str]], QuantTools]:
    """Tools whose ranking records every sensitivity ranking accuracy_aware_quantize computes."""
    rankings = []

    def spy(*args, **kwargs):
        rankings.append(sensitivity_ranking(*args, **kwargs))
        return rankings[-1]

    return rankings, QuantTools(ranking=spy)


@pytest.mark.parametrize("method, tried_as_is", [("static_int8", 6), ("dynamic_int8", 1)])
def test_rejected_remedies_in_order_then_fp32(exported, tiny_recipe, tmp_path, method, tried_as_is):
    _, path, _ = exported
    rt = _runtime(tiny_recipe, tmp_path)
    fp32 = _copy(path, tmp_path / "q")
    rankings, tools = _spy_ranking()
    # an allowed drop no quantization can meet (the recipe's validation would refuse it)
    result, predictions = accuracy_aware_quantize(rt, _plan(method, -1.0), fp32, PRE, tools=tools)
    assert not result.accepted and result.file is None and predictions is None
    assert "not published" in result.reason and "interval" in result.reason
    assert [p.name for p in (tmp_path / "q").iterdir()] == ["model.onnx"]  # the rejected file is gone
    cap = float_layer_cap(len(layer_nodes(fp32)))
    assert len(rankings) == 1 and len(result.attempts) == tried_as_is + cap
    assert [a.float_nodes for a in result.attempts] == [[]] * tried_as_is + [rankings[0][:k] for k in range(1, cap + 1)]
    for a in result.attempts:
        assert not a.accepted and a.drop_low <= a.drop <= a.drop_high and a.confidence == pytest.approx(0.9)
    assert result.checked_on.startswith("the validation split")  # decisions on validation, never test
    remedies = [a.remedy for a in result.attempts]
    if method == "static_int8":  # ReLU only: no ReLU6 pairs to equalize through
        assert remedies == ["ptq"] * 3 + ["equalized"] * 3 + ["float-layers"] * cap
        assert [a.calibration for a in result.attempts[:3]] == ["minmax", "entropy", "percentile"]
        by_drop = sorted(result.attempts[:3], key=lambda a: a.drop)
        assert [a.calibration for a in result.attempts[3:6]] == [a.calibration for a in by_drop]
        best = min(result.attempts[:6], key=lambda a: a.drop)
        assert {(a.calibration, a.equalization) for a in result.attempts[6:]} == {(best.calibration,
                                                                                  best.equalization)}
    else:
        assert remedies == ["ptq"] + ["float-layers"] * cap


def test_quantization_aware_fine_tune_comes_after_equalization_and_before_float_layers(exported, tiny_recipe,
                                                                                     tmp_path):
    _, path, _ = exported
    rt = _runtime(tiny_recipe, tmp_path)
    fp32 = _copy(path, tmp_path / "q")
    rankings, tools = _spy_ranking()
    fits = []

    def qat_fit(calibration, method, out, images):  # stands in for qat_distill: the order is what is tested
        fits.append(method)
        quantize_static_int8(fp32, out, calibration, method, [])
        return QatRun(method, 2, "distillation", 1e9, 1.0, {"max_diff_steps": 0.0})

    result, _ = accuracy_aware_quantize(rt, _plan("static_int8", -1.0), fp32, PRE, qat_fit=qat_fit, tools=tools)
    cap = float_layer_cap(len(layer_nodes(fp32)))
    assert [a.remedy for a in result.attempts] == ["ptq"] * 3 + ["equalized"] * 3 + ["qat"] + ["float-layers"] * cap
    plain = min(result.attempts[:3], key=lambda a: a.drop)
    assert fits == [plain.calibration]  # fine-tuned once, from the plain calibration that lost least
    assert result.attempts[6].qat_epochs == 2 and result.qat.epochs == 2
    best_post_training = min(result.attempts[:6], key=lambda a: a.drop)  # float layers build on post-training
    assert {(a.calibration, a.equalization, a.qat_epochs) for a in result.attempts[7:]} == {
        (best_post_training.calibration, best_post_training.equalization, 0)}
    assert len(rankings) == 1 and not (tmp_path / "q" / "qat").exists()


def _float_nodes(path) -> set[str]:
    """The Conv/Gemm nodes of a QDQ file whose weight is not dequantized from INT8."""
    return {n.name for n in onnx.load(str(path)).graph.node
            if n.op_type in ("Conv", "Gemm") and not n.input[1].endswith("_DequantizeLinear_Output")}


def test_float_layer_search_stops_at_the_first_accepted(exported, tiny_recipe, tmp_path):
    _, path, _ = exported
    rt = _runtime(tiny_recipe, tmp_path)
    fp32 = _copy(path, tmp_path / "q")
    rankings, tools = _spy_ranking()
    real = check_scores

    def int8_right_only_with_two_most_sensitive_in_float(file, preprocess, dataset, reference=False):
        scores = real(file, preprocess, dataset)
        keeps = file.name == "model.onnx" or (rankings and set(rankings[0][:2]) <= _float_nodes(file))
        return scores._replace(predictions=scores.labels if keeps else (scores.labels + 1) % len(CLASSES))

    tools = dataclasses.replace(tools, judge=int8_right_only_with_two_most_sensitive_in_float)
    result, predictions = accuracy_aware_quantize(rt, _plan("static_int8", 0.01), fp32, PRE, tools=tools)
    assert [a.accepted for a in result.attempts] == [False] * 7 + [True]
    assert [a.float_nodes for a in result.attempts[6:]] == [rankings[0][:1], rankings[0][:2]]
    assert result.accepted and result.reason is None and (tmp_path / "q" / result.file).exists()
    assert set(rankings[0][:2]) <= _float_nodes(tmp_path / "q" / result.file)
    assert result.attempts[-1].drop == 0.0 and predictions is not None


def test_a_drop_over_the_limit_but_inside_the_noise_tries_the_other_calibrations(exported, tiny_recipe, tmp_path):
    _, path, _ = exported
    rt = _runtime(tiny_recipe, tmp_path)
    fp32 = _copy(path, tmp_path / "q")
    real = check_scores
    wrong = {"minmax": 2, "entropy": 1, "percentile": 3}  # images each calibration gets wrong: all inside the noise
    quantized, tools = _spy_quantize()

    def predictions(file, preprocess, dataset, reference=False):
        scores = real(file, preprocess, dataset)
        predicted = scores.labels.copy()
        if file.name != "model.onnx":
            wrong_now = wrong[quantized[-1][0]]
            predicted[:wrong_now] = (scores.labels[:wrong_now] + 1) % len(CLASSES)
        return scores._replace(predictions=predicted)

    result, kept = accuracy_aware_quantize(rt, _plan("static_int8", 0.0), fp32, PRE,
                                           tools=dataclasses.replace(tools, judge=predictions))
    # none is shown to lose more than the limit, none is within it: every remedy is tried, the one losing least
    # (the first of equal ones) is kept, and its file
    assert result.accepted and [a.calibration for a in result.attempts[:6]] == ["minmax", "entropy", "percentile",
                                                                                 "entropy", "minmax", "percentile"]
    assert [a.used for a in result.attempts].index(True) == 1 and sum(a.used for a in result.attempts) == 1
    assert quantized[-1][0] == "entropy" and result.attempts[1].remedy == "ptq"
    assert (kept.predictions != real(fp32, PRE, rt.eval_images("check", PRE)).labels).sum() == 1


def _weight(path, name) -> np.ndarray:
    return onnx.numpy_helper.to_array(next(i for i in onnx.load(str(path)).graph.initializer if i.name == name))


def _planted(path, out, plant):
    """A copy of ``path`` at ``out`` with ``plant(weights)`` applied (weights by name, as numpy); returns ``out``."""
    proto = onnx.load(str(path))
    initializers = {i.name: i for i in proto.graph.initializer}
    weights = {name: onnx.numpy_helper.to_array(i).copy() for name, i in initializers.items()}
    plant(weights)
    for name, init in initializers.items():
        init.CopyFrom(onnx.numpy_helper.from_array(weights[name], name))
    onnx.save(proto, str(out))
    return out


def test_sensitivity_ranks_a_planted_badly_quantizable_layer_first(exported, tmp_path):
    _, path, _ = exported
    nodes = {n.input[1]: n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"}
    images = np.random.default_rng(0).standard_normal((24, 3, 32, 32)).astype(np.float32)

    def half_steps(w):  # per output channel one weight of 1, the rest just under half an INT8 step: all lost
        planted = np.sign(w["layer4.0.downsample.1.weight"]) * 0.49 / 127
        planted[:, 0, 0, 0] = 1.0
        w["layer4.0.downsample.1.weight"] = planted.astype(np.float32)

    static = sensitivity_ranking("static_int8", _planted(path, tmp_path / "w.onnx", half_steps), [images[:8]],
                                 "minmax", images[8:])
    assert static[0] == nodes["layer4.0.downsample.1.weight"]
    zero = {name for weight, name in nodes.items() if not _weight(path, weight).any()}
    assert zero and not zero & set(static)  # all-zero layers (zero-initialised branches) lose nothing

    def outlier_channel(w):  # one output channel 1000 times larger (undone by the next layer on the live path)
        w["layer2.0.downsample.1.weight"][0] *= 1000
        w["layer3.0.downsample.1.weight"][:, 0] /= 1000

    dynamic = sensitivity_ranking("dynamic_int8", _planted(path, tmp_path / "a.onnx", outlier_channel), None, None,
                                  images)
    assert dynamic[0] == nodes["layer2.0.downsample.1.weight"]  # dynamic INT8 gives a Conv weight one scale


def test_generous_limit_accepts_first_attempt_and_keeps_metadata(exported, tiny_recipe, tmp_path):
    _, path, meta = exported
    rt = _runtime(tiny_recipe, tmp_path)
    fp32 = _copy(path, tmp_path / "q")
    rankings, tools = _spy_ranking()
    result, scores = accuracy_aware_quantize(rt, _plan("static_int8", 1.0), fp32, PRE, tools=tools)
    assert result.accepted and len(result.attempts) == 1 and result.attempts[0].accepted and not rankings
    quantized = read_metadata(fp32.with_name(result.file))
    assert quantized["precision"] == "int8" and quantized["classes"] == meta["classes"]
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(fp32.with_name(result.file))).graph.node)
    logits, labels = onnx_logits(fp32.with_name(result.file), PRE, rt.eval_images("check", PRE))
    assert scores.predictions.tolist() == logits.argmax(1).tolist()
    nll = -np.log(np.exp(logits - logits.max(1, keepdims=True)) / np.exp(logits - logits.max(1, keepdims=True)).sum(1,
                  keepdims=True))[np.arange(len(labels)), labels]
    assert np.allclose(scores.nll, nll, atol=1e-5) and scores.labels.tolist() == labels.tolist()


@pytest.mark.parametrize("profile, bits", [("x86-avx2", 7), ("x86-avx512-vnni", 8)])
def test_the_profile_sets_the_weight_range(exported, tiny_recipe, tmp_path, profile, bits):
    """x86 without VNNI gets 7-bit weights (its INT8 kernels cannot overflow their 16-bit sums), others 8."""
    plan = ExportPlan.from_recipe(load_recipe(tiny_recipe, [f"budget.profile={profile}", "export.quantize=auto"]),
                              int8_conv_exact())
    assert plan.reduce_range == (bits == 7) and plan.qat.reduce_range == plan.reduce_range
    rt = _runtime(tiny_recipe, tmp_path)
    fp32 = _copy(exported[1], tmp_path / "q")
    result, _ = accuracy_aware_quantize(rt, dataclasses.replace(plan, max_accuracy_drop=1.0), fp32, PRE)
    weights = [onnx.numpy_helper.to_array(i) for i in onnx.load(str(fp32.with_name(result.file))).graph.initializer
               if i.data_type == onnx.TensorProto.INT8]
    assert result.weight_bits == bits and max(int(np.abs(w.astype(int)).max()) for w in weights) == {7: 64, 8: 127}[bits]


def test_int8_is_judged_as_the_device_computes_it(exported, tiny_recipe, tmp_path):
    """On a host whose INT8 kernels overflow 16-bit sums (x86 without VNNI), the quantized files of a profile
    whose device computes exactly (VNNI, arm64) are judged by the QDQ reference; FP32 and the 7-bit files of
    x86-avx2 (which cannot overflow) by the kernels."""
    plans = {p: ExportPlan.from_recipe(load_recipe(tiny_recipe, [f"budget.profile={p}", "export.quantize=auto"]),
                                       int8_exact_here=False)
             for p in ("x86-avx2", "x86-avx512-vnni", "arm64-board")}
    assert [plan.int8_reference for plan in plans.values()] == [False, True, True]
    calls = []

    def spy(path, preprocess, check_set, reference=False):
        calls.append((path.name, reference))
        return check_scores(path, preprocess, check_set, reference)

    fp32 = _copy(exported[1], tmp_path / "q")
    plan = dataclasses.replace(plans["x86-avx512-vnni"], max_accuracy_drop=1.0)
    result, _ = accuracy_aware_quantize(_runtime(tiny_recipe, tmp_path), plan, fp32, PRE, tools=QuantTools(judge=spy))
    assert result.reference and calls == [("model.onnx", False), ("model.int8.onnx", True)]


def _trained(exported, tmp_path) -> Done[TrainedModel]:
    model, _, _ = exported
    folder = tmp_path / "trained"
    save_trained(model, PRE, CLASSES, folder / "model")
    return Done("distill", "k", folder, TrainedModel(model="test_resnet", weights="random init", preprocess=PRE,
                                                     params=1, feature_dim=1), 0.0)


@pytest.mark.parametrize("method", [None, "static_int8"])
def test_export_records_validation_predictions_of_each_file(exported, tiny_recipe, tmp_path, method):
    rt = _runtime(tiny_recipe, tmp_path)
    done = export_model(rt, _plan(method, 1.0), "student", _trained(exported, tmp_path))
    e = done.result
    assert e.files == (["model.onnx"] if method is None else ["model.onnx", "model.int8.onnx"])
    assert list(e.val_predictions) == e.files and len(e.val_labels) == len(rt.data.val) > 0
    logits, labels = onnx_logits(done.file("model.onnx"), PRE, rt.eval_images("check", PRE))
    assert e.val_labels == labels.tolist() == [s.label for s in rt.data.val]
    assert e.val_predictions["model.onnx"] == logits.argmax(1).tolist()
    for file in e.files[1:]:
        quantized, _ = onnx_logits(done.file(file), PRE, rt.eval_images("check", PRE))
        assert e.val_predictions[file] == quantized.argmax(1).tolist()


def test_check_split_is_the_validation_split(tiny_data):
    from factory.errors import DataError
    from factory.recipe import DataConfig

    with_val = load_task_data(DataConfig(root=tiny_data, val_fraction=0.25))
    description, samples = with_val.check_split()
    assert samples == with_val.val and "validation split" in description
    assert not {s.path for s in samples} & {s.path for s in with_val.test}
    without = load_task_data(DataConfig(root=tiny_data, val_fraction=0.0))
    with pytest.raises(DataError, match="data.val_fraction"):
        without.check_split()


def test_latency_child_process_reports_rounds_percentiles_and_memory(exported):
    _, path, _ = exported
    settings = LatencySettings(rounds=3, warmup=1, runs=4, min_time_s=0, threads=1)
    measured = measure([(str(path), 32), (str(path), 32)], settings)
    for lat in measured.latencies:
        assert lat.runs >= 12 and len(lat.rounds_p50) == 3 and 0 < lat.low <= lat.p50 <= lat.high
        assert lat.p50 <= lat.p99 and lat.memory.peak_rss_mb > 0 and lat.provider == "CPUExecutionProvider"
    assert measured.load.cores >= 1 and measured.load.load_before >= 0
    assert len(ratio(*measured.latencies).rounds) == 3


class _Scaled(torch.nn.Module):
    """A convolution whose output is multiplied by a plain attribute: two instances with different ``scale`` have
    the same modules and state dict, so only the outputs can tell their graphs apart."""

    def __init__(self, scale: float):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
        self.scale = scale

    def forward(self, x):
        return self.body(x) * self.scale


def _outputs(path, batch):
    import onnxruntime as ort
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": batch.numpy()})[0]


def _graph(path):
    """The graph up to the names the optimizer gives folded constants: operators, their attributes, the weights."""
    proto = onnx.load(str(path))
    weights = sorted(onnx.numpy_helper.to_array(i).tobytes() for i in proto.graph.initializer)
    return [(n.op_type, str(n.attribute)) for n in proto.graph.node], weights, proto.graph.input, proto.graph.output


def test_a_second_model_of_one_structure_reuses_the_trace_with_its_own_weights(tmp_path, monkeypatch):
    from factory import onnx_tools

    monkeypatch.setattr(onnx_tools, "TEMPLATES", type(onnx_tools.TEMPLATES)())
    first, second = (create_model("test_resnet", None, 3).eval() for _ in range(2))
    export_onnx(first, PRE, tmp_path / "first.onnx", {}, 18)
    monkeypatch.setattr(onnx_tools, "_traced", lambda *a: pytest.fail("traced again"))
    export_onnx(second, PRE, tmp_path / "second.onnx", {}, 18)
    batch = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = second(batch).numpy()
    np.testing.assert_allclose(_outputs(tmp_path / "second.onnx", batch), expected, atol=1e-4)
    assert np.abs(_outputs(tmp_path / "first.onnx", batch) - expected).max() > 1e-2  # the weights did change
    monkeypatch.undo()
    torch.onnx.export(second, (torch.zeros(2, 3, 32, 32),), str(tmp_path / "traced.onnx"), input_names=["input"],
                      output_names=["logits"], opset_version=18, dynamo=True, external_data=False,
                      dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
    assert _graph(tmp_path / "second.onnx") == _graph(tmp_path / "traced.onnx")


def test_a_structure_the_key_cannot_tell_apart_is_traced_again(tmp_path, monkeypatch):
    from factory import onnx_tools

    monkeypatch.setattr(onnx_tools, "TEMPLATES", type(onnx_tools.TEMPLATES)())
    export_onnx(_Scaled(1.0).eval(), PRE, tmp_path / "one.onnx", {}, 18)
    assert len(onnx_tools.TEMPLATES) == 1  # its trace is kept, so the next export is offered it
    scaled = _Scaled(5.0).eval()
    export_onnx(scaled, PRE, tmp_path / "five.onnx", {}, 18)
    assert list(onnx_tools.TEMPLATES.values()) == [None]  # that structure is traced every time from now on
    batch = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(_outputs(tmp_path / "five.onnx", batch), scaled(batch).numpy(), atol=1e-4)


class _Untraceable(torch.nn.Module):
    def forward(self, x):
        return torch.linalg.svdvals(x[:, 0, :3, :3])  # no ONNX operator computes it


def test_a_model_that_cannot_be_traced_is_one_export_error_naming_it(tmp_path):
    with pytest.raises(ExportError, match="ONNX export of _Untraceable failed"):
        export_onnx(_Untraceable().eval(), PRE, tmp_path / "model.onnx", {}, 18)
    assert not list(tmp_path.iterdir())  # no half-written file
