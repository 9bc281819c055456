"""Imported once by the fresh-process server (``tests/fresh_process.py``): traces the tiny task's two model
structures (``factory.testing.TINY_RECIPE``'s student and teacher, at its image size and opset), so that a build
forked from the server fills those traces with its own models' weights instead of tracing them again, as a later
export of one process does (:data:`factory.onnx_tools.TEMPLATES`; every reuse is still checked against PyTorch, and
a structure that differs is traced as usual). Only the export's and the recipe's modules are imported: none reads
the environment at import.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import SimpleNamespace

import timm
import yaml

from factory.onnx_tools import TEMPLATES, export_onnx
from factory.recipe import ExportConfig
from factory.testing import CLASSES, TINY_RECIPE


def trace_tiny_models() -> int:
    """Export the tiny recipe's student and teacher once at its image size and opset (the files are thrown
    away); returns how many traces are kept."""
    recipe = yaml.safe_load(TINY_RECIPE.format(root="."))
    opset = ExportConfig(**recipe["export"]).opset
    with tempfile.TemporaryDirectory() as folder:
        for name in (recipe["student"]["model"], recipe["teacher"]["model"]):
            model = timm.create_model(name, num_classes=len(CLASSES))
            export_onnx(model, SimpleNamespace(size=recipe["data"]["image_size"]), Path(folder) / f"{name}.onnx",
                        {}, opset)
    return len(TEMPLATES)


trace_tiny_models()
