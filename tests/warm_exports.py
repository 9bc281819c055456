"""Imported once by the fresh-process server (``tests/fresh_process.py``): traces the tiny task's two model
structures (its student and teacher at 32 px, 3 classes, the recipe's opset), so that a build forked from the
server fills those traces with its own models' weights instead of tracing them again, as a later export of one
process does (:data:`factory.onnx_tools.TEMPLATES`; every reuse is still checked against PyTorch, and a structure
that differs is traced as usual). Only the export's modules are imported: none reads the environment at import.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import SimpleNamespace

import timm

from factory.onnx_tools import TEMPLATES, export_onnx
from factory.recipe import ExportConfig
from factory.testing import CLASSES

TINY_MODELS = ("test_efficientnet", "test_resnet")
"""The tiny recipe's student and teacher (``factory.testing.TINY_RECIPE``)."""


def trace_tiny_models(size: int = 32) -> int:
    """Export each tiny model once (the files are thrown away); returns how many traces are kept."""
    opset = ExportConfig.model_fields["opset"].default
    with tempfile.TemporaryDirectory() as folder:
        for name in TINY_MODELS:
            model = timm.create_model(name, num_classes=len(CLASSES))
            export_onnx(model, SimpleNamespace(size=size), Path(folder) / f"{name}.onnx", {}, opset)
    return len(TEMPLATES)


trace_tiny_models()
