"""The shipped model as OpenVINO IR, and every form of the shipped model judged like an ONNX file: accepted or
rejected on validation with the paired rule (a rejected one deleted), and timed beside the ONNX file in one run."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import torch

from factory import openvino_ir
from factory.data import Preprocess
from factory.formats import judge_forms
from factory.image_graph import write_image_graph
from factory.latency import LatencySettings
from factory.models import create_model
from factory.quant.quantizers import quantize_static_int8
from factory.runtime.model import ExportedModel
from factory.runtime import openvino as runtime_openvino
from factory.runtime.openvino import RUNTIME
from factory.stages.export import export_onnx

pytest.importorskip("openvino")
QUICK = LatencySettings(rounds=2, warmup=1, runs=3, min_time_s=0.0, threads=1)
RUNTIMES = {"onnx": "onnxruntime", "image": "onnxruntime", "openvino": "OpenVINO CPU"}


@pytest.fixture(scope="module")
def shipped_int8(tmp_path_factory, tiny_data):
    """A static INT8 file as the build ships it, and the tiny task's images split in two, as (path, label)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("openvino")
    pre = Preprocess(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), crop_pct=0.9, interpolation="bicubic")
    classes = sorted(p.name for p in (tiny_data / "test").iterdir())
    fp32, int8 = folder / "student.onnx", folder / "student.int8.onnx"
    export_onnx(create_model("test_resnet", None, 3).eval(), pre, fp32,
                {"classes": json.dumps(classes), **pre.metadata(), "precision": "fp32"}, opset=18)
    calibration = [np.random.default_rng(0).standard_normal((4, 3, 32, 32), dtype=np.float32)]
    quantize_static_int8(fp32, int8, calibration, "minmax", [])
    images = [(p, classes.index(p.parent.name)) for p in sorted(tiny_data.rglob("*.png"))]
    return int8, images[::2], images[1::2]


def test_the_ir_keeps_the_int8_layers_and_names_the_classes_factory_predict_names(shipped_int8, tmp_path):
    int8, _, test = shipped_int8
    expected = ExportedModel.open(int8, 1).top1([path for path, _ in test])
    result = openvino_ir.openvino_export(int8, tmp_path, test, expected, 1)
    assert result.file == "student.int8.xml" and result.source == "student.int8.onnx" and result.images == len(test)
    assert (tmp_path / "student.int8.xml").is_file() and (tmp_path / "student.int8.bin").is_file()
    assert result.agreement >= 0.9  # INT8 in two runtimes: a rare image may flip
    assert result.int8_layers == result.layers > 0  # OpenVINO runs the file's quantized layers in INT8


def test_every_form_is_judged_on_validation_and_timed_beside_the_onnx_file(shipped_int8, tmp_path):
    int8, val, _ = shipped_int8
    forms = {"image": write_image_graph(int8, tmp_path / "student.int8.image.onnx"),
             "openvino": openvino_ir.write_ir(int8, tmp_path)}
    rows = judge_forms(int8, forms, val, 0.01, QUICK, RUNTIMES)
    assert [r.format for r in rows] == ["onnx", "image", "openvino"] and all(r.accepted for r in rows)
    assert all(r.val_images == len(val) and r.latency.p50 > 0 and r.vs_onnx.median > 0 for r in rows)
    assert rows[0].vs_onnx.median == 1.0 and rows[0].drop == 0.0
    assert rows[2].latency.provider == RUNTIME and rows[0].latency.provider == "CPUExecutionProvider"
    assert abs(rows[1].drop) <= 0.05 and abs(rows[2].drop) <= 0.1


def test_without_images_to_judge_on_the_forms_are_only_timed(shipped_int8, tmp_path):
    """A refit model trained on the validation images: they decide nothing for its forms."""
    int8, _, _ = shipped_int8
    onnx, ir = judge_forms(int8, {"openvino": openvino_ir.write_ir(int8, tmp_path)}, [], 0.01, QUICK, RUNTIMES)
    assert onnx.val_images == ir.val_images == 0 and ir.drop is None and ir.val_accuracy is None and ir.accepted
    assert ir.latency.p50 > 0 and onnx.vs_onnx.median == 1.0


def test_a_form_that_loses_accuracy_is_rejected_deleted_and_not_timed(shipped_int8, tmp_path, monkeypatch):
    int8, val, _ = shipped_int8
    xml = openvino_ir.write_ir(int8, tmp_path)
    labels = iter([label for _, label in val])  # the IR runs the validation images in order, in batches

    def always_wrong(session, _outputs, feed):  # the class after the right one, for every image
        wrong = [(next(labels) + 1) % 3 for _ in range(len(feed["input"]))]
        return [np.eye(3, dtype=np.float32)[wrong]]

    monkeypatch.setattr(runtime_openvino.OpenVinoSession, "run", always_wrong)
    onnx, ir = judge_forms(int8, {"openvino": xml}, val, 0.01, QUICK, RUNTIMES)
    assert onnx.accepted and not ir.accepted and ir.val_accuracy == 0.0 and ir.drop_low > 0.01
    assert not xml.exists() and not xml.with_suffix(".bin").exists()
    assert ir.latency is None and onnx.latency is not None


def test_predict_info_and_bench_open_the_ir_as_they_open_an_onnx_file(shipped_int8, tmp_path):
    from typer.testing import CliRunner

    from factory.cli import app

    int8, _, test = shipped_int8
    xml = openvino_ir.write_ir(int8, tmp_path)
    onnx, ir = ExportedModel.open(int8, 1), ExportedModel.open(xml, 1)
    assert ir.classes == onnx.classes and ir.size == onnx.size == 32 and ir.metadata["precision"] == "int8"
    paths = [path for path, _ in test]
    assert np.mean(np.array(ir.top1(paths)) == np.array(onnx.top1(paths))) >= 0.9
    assert ir.info()["size_mb"] > xml.stat().st_size / 2**20  # the weights in the .bin count
    done = CliRunner().invoke(app, ["bench", str(int8), str(xml), "--rounds", "1", "--runs", "2", "--min-time", "0"])
    assert done.exit_code == 0, done.output
    assert "student.int8.xml: p50" in done.output


def test_without_openvino_the_format_is_skipped_with_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    line = openvino_ir.missing()
    assert "not installed" in line and "pip install" in line


def test_the_conversion_sends_no_telemetry_and_writes_nothing_home(shipped_int8, tmp_path, monkeypatch):
    """OpenVINO's converter posts usage events from a forked process unless it runs in CI; offline that process
    held a build at exit for ever. A fresh telemetry singleton, no consent file and no CI variable: nothing sent."""
    from openvino_telemetry.backend.backend_ga4 import GA4Backend
    from openvino_telemetry.main import Telemetry

    sent = []
    monkeypatch.setattr(Telemetry, "_SingletonMetaClass__single_instance", None)
    monkeypatch.setattr(GA4Backend, "send", lambda self, message: sent.append(message))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    for variable in ("CI", "TF_BUILD", "JENKINS_URL"):  # what OpenVINO takes for CI
        monkeypatch.delenv(variable, raising=False)
    openvino_ir.write_ir(shipped_int8[0], tmp_path)
    assert sent == [] and not any((tmp_path / "home").rglob("*"))
    assert "CI" not in os.environ  # the variable is put back as it was
