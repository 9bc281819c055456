"""The shipped model as OpenVINO IR, judged like an ONNX file: converted from the shipped INT8 file, accepted or
rejected on validation with the paired rule, scored on test, and timed beside the ONNX file in one run."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from factory import openvino_ir
from factory.data import Preprocess
from factory.latency import LatencySettings
from factory.models import create_model
from factory.onnx_tools import quantize_static_int8
from factory.stages.export import export_onnx

pytest.importorskip("openvino")
QUICK = LatencySettings(rounds=2, warmup=1, runs=3, min_time_s=0.0, threads=1)


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


def test_the_ir_of_the_int8_file_is_accepted_names_its_classes_and_is_timed_beside_it(shipped_int8):
    int8, val, test = shipped_int8
    result = openvino_ir.openvino_export(int8, int8.parent, val, test, 0.01, QUICK)
    assert result.accepted and result.file == "student.int8.xml" and result.source == "student.int8.onnx"
    assert (int8.parent / "student.int8.xml").is_file() and (int8.parent / "student.int8.bin").is_file()
    assert result.val_images == len(val) and result.test_images == len(test)
    assert result.agreement >= 0.9 and abs(result.drop) <= 0.1  # INT8 in two runtimes: a rare image may flip
    assert result.latency.provider == openvino_ir.RUNTIME and result.onnx_latency.provider == "CPUExecutionProvider"
    assert result.latency.p50 > 0 and result.vs_onnx.median > 0
    assert result.int8_layers == result.layers > 0  # OpenVINO runs the file's quantized layers in INT8


def test_an_ir_that_loses_accuracy_is_rejected_and_deleted(shipped_int8, tmp_path, monkeypatch):
    int8, val, test = shipped_int8
    source = tmp_path / int8.name
    source.write_bytes(int8.read_bytes())
    splits = iter([val, test])  # the IR is scored on validation, then on test

    def always_wrong(xml, batches, threads):  # the class after the right one, for every image
        labels = np.array([label for _, label in next(splits)])
        return np.eye(3, dtype=np.float32)[(labels + 1) % 3]

    monkeypatch.setattr(openvino_ir, "ir_logits", always_wrong)
    result = openvino_ir.openvino_export(source, tmp_path, val, test, 0.01, QUICK)
    assert not result.accepted and result.val_accuracy == 0.0 and result.drop_low > 0.01
    assert not (tmp_path / "student.int8.xml").exists() and not (tmp_path / "student.int8.bin").exists()
    assert result.latency is None


def test_without_openvino_the_format_is_skipped_with_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    line = openvino_ir.missing()
    assert "not installed" in line and "pip install" in line
