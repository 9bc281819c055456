"""The shipped model in onnxruntime's mobile format: an .ort file that loads and names the same classes, its
reduced-build operator configuration and the mobile usability check."""

from __future__ import annotations

import json

import torch

from factory.data import Preprocess
from factory.mobile import mobile_export, target_platform
from factory.models import create_model
from factory.stages.export import export_onnx


def test_the_ort_file_loads_names_the_same_classes_and_lists_its_operators(tmp_path, tiny_data):
    torch.manual_seed(0)
    pre = Preprocess(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), crop_pct=0.9, interpolation="bicubic")
    model = tmp_path / "student.onnx"
    classes = sorted(p.name for p in (tiny_data / "test").iterdir())
    export_onnx(create_model("test_resnet", None, 3).eval(), pre, model,
                {"classes": json.dumps(classes), **pre.metadata(), "precision": "fp32"}, opset=18)
    images = [(p, classes.index(p.parent.name)) for p in sorted((tiny_data / "test").rglob("*.png"))]
    from factory.runtime.model import ExportedModel

    expected = ExportedModel.open(model, 1).top1([path for path, _ in images])
    result = mobile_export(model, tmp_path, "amd64", images, expected)
    assert (tmp_path / "student.ort").is_file() and result.file == "student.ort"
    assert result.images == len(images) and result.agreement == 1.0
    config = (tmp_path / result.operators_config).read_text()
    assert "Conv" in config and "ai.onnx" in config
    assert "Nchwc" not in config and "ReorderInput" not in config  # no layout only this host's CPU can run
    assert "CoreML" in (tmp_path / result.usability_file).read_text()
    assert not list(tmp_path.glob(".ort-*"))  # no temporary folder left behind
    assert target_platform(("aarch64", "arm64")) == "arm" and target_platform(("x86_64",)) == "amd64"
