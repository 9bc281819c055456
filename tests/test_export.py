"""ONNX export: metadata round-trip, parity with PyTorch, accuracy-aware quantization fallback."""

import json

import numpy as np
import onnx
import pytest
import torch

from factory.cache import StageCache
from factory.context import Runtime
from factory.data import Preprocess
from factory.latency import LatencySettings, measure, ratio
from factory.models import create_model
from factory.recipe import load_recipe
from factory.sources import load_task_data
from factory.stages.export import (
    ExportPlan,
    accuracy_aware_quantize,
    export_onnx,
    parity,
    read_metadata,
)

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


@pytest.mark.parametrize("method, attempts", [("static_int8", 4), ("dynamic_int8", 2)])
def test_impossible_accuracy_limit_falls_back_to_fp32(exported, tiny_recipe, tmp_path, method, attempts):
    _, path, _ = exported
    rt = _runtime(tiny_recipe, tmp_path)
    work = tmp_path / "q"
    work.mkdir()
    fp32 = work / "model.onnx"
    fp32.write_bytes(path.read_bytes())
    # an allowed drop no quantization can meet (the recipe's validation would refuse it)
    result = accuracy_aware_quantize(rt, _plan(method, -1.0), fp32, PRE)
    assert not result.accepted and "not published" in result.reason and result.file is None
    assert [p.name for p in work.iterdir()] == ["model.onnx"]  # the rejected file is gone
    assert len(result.attempts) == attempts
    assert result.attempts[-1].float_nodes  # last resort keeps the first conv and classifier in float
    assert "training images" in result.checked_on  # no validation split: a slice of training images, never test
    if method == "static_int8":
        assert [a.calibration for a in result.attempts[:3]] == ["minmax", "entropy", "percentile"]


def test_generous_limit_accepts_first_attempt_and_keeps_metadata(exported, tiny_recipe, tmp_path):
    _, path, meta = exported
    rt = _runtime(tiny_recipe, tmp_path)
    fp32 = tmp_path / "model.onnx"
    fp32.write_bytes(path.read_bytes())
    result = accuracy_aware_quantize(rt, _plan("static_int8", 1.0), fp32, PRE)
    assert result.accepted and len(result.attempts) == 1
    quantized = read_metadata(tmp_path / result.file)
    assert quantized["precision"] == "int8" and quantized["classes"] == meta["classes"]
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(tmp_path / result.file)).graph.node)


def test_check_split_is_validation_or_held_out_training_images(tiny_data):
    from factory.recipe import DataConfig

    with_val = load_task_data(DataConfig(root=tiny_data, val_fraction=0.25))
    assert with_val.check_split() == ("validation split", with_val.val)
    without = load_task_data(DataConfig(root=tiny_data))
    description, samples = without.check_split()
    assert "training images" in description and len(samples) == 18  # half of each class's 12, at most 20
    assert {s.path for s in samples} <= {s.path for s in without.train}
    assert not {s.path for s in samples} & {s.path for s in without.test}


def test_latency_child_process_reports_rounds_percentiles_and_memory(exported):
    _, path, _ = exported
    settings = LatencySettings(rounds=3, warmup=1, runs=4, min_time_s=0, threads=1)
    measured = measure([(str(path), 32), (str(path), 32)], settings)
    for lat in measured.latencies:
        assert lat.runs >= 12 and len(lat.rounds_p50) == 3 and 0 < lat.low <= lat.p50 <= lat.high
        assert lat.p50 <= lat.p99 and lat.peak_rss_mb > 0 and lat.provider == "CPUExecutionProvider"
    assert measured.load.cores >= 1 and measured.load.load_before >= 0
    assert len(ratio(*measured.latencies).rounds) == 3
