"""The shipped model in onnxruntime's mobile format: ``.ort`` (onnxruntime's own converter, optimizations fixed at
the portable 'extended' level for the profile's platform), the operator configuration a reduced custom
onnxruntime build needs (``--include_ops_by_config``), and onnxruntime's mobile usability check (NNAPI and CoreML partitions) stored beside
it; the ``.ort`` file's accuracy is checked in onnxruntime on the test split against the ONNX file it came from."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
from pathlib import Path
from unittest import mock

from pydantic.dataclasses import dataclass

from factory.fields import STRICT

CHANGES_NO_RESULT = True

OPTIMIZATION_ENV = "ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL"
"""The converter reads its graph optimization level from this variable."""


@dataclass(config=STRICT)
class MobileExport:
    """The ``.ort`` file of the shipped model, what a reduced onnxruntime build needs for it, and its check."""

    file: str
    operators_config: str
    usability_file: str
    mobile_eps_may_help: bool
    """onnxruntime's usability checker: NNAPI or CoreML may run (part of) the model well."""
    target_platform: str
    images: int
    accuracy: float
    agreement: float
    """Share of test images on which the ``.ort`` file names the same class as the ONNX file."""


def write_ort(model: Path, folder: Path, target_platform: str) -> tuple[Path, Path]:
    """``model`` converted to ``<stem>.ort`` in ``folder`` with its ``<stem>.required_operators.config``;
    ``target_platform``: 'arm' (INT8 QDQ kept for arm's kernels) or 'amd64'."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    with tempfile.TemporaryDirectory(dir=folder, prefix=".ort-") as tmp, contextlib.redirect_stdout(io.StringIO()):
        source = Path(tmp) / model.name
        shutil.copyfile(model, source)
        out = Path(tmp) / "out"
        logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)
        # 'extended', not the converter's default 'all': that adds layout optimizations for this host's CPU (NCHWc
        # on x86), which a phone cannot run
        with mock.patch.dict(os.environ, {OPTIMIZATION_ENV: "extended"}):  # the process's own value comes back
            convert_onnx_models_to_ort(source, output_dir=out, optimization_styles=[OptimizationStyle.Fixed],
                                       target_platform=target_platform)
        ort_file, config = folder / f"{model.stem}.ort", folder / f"{model.stem}.required_operators.config"
        shutil.move(out / f"{model.stem}.extended.ort", ort_file)  # the converter names the level in its outputs
        shutil.move(out / f"{model.stem}.required_operators.extended.config", config)
    return ort_file, config


def usability(model: Path, out: Path) -> bool:
    """onnxruntime's mobile usability check of ``model``, its log written to ``out``; whether NNAPI or CoreML may
    run it well."""
    from onnxruntime.tools.mobile_helpers.usability_checker import analyze_model

    logger = logging.getLogger(f"factory.mobile.{model.name}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    text = io.StringIO()
    handler = logging.StreamHandler(text)
    logger.addHandler(handler)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            may_help = bool(analyze_model(model, logger=logger))
    finally:
        logger.removeHandler(handler)
    out.write_text(text.getvalue())
    return may_help


def mobile_export(model: Path, folder: Path, target_platform: str, images: list[tuple[Path, int]],
                  expected: list[int]) -> MobileExport:
    """The ``.ort`` file of ``model`` with its operator configuration and usability check in ``folder``, and its
    classes on ``images`` (path, label) against the labels and ``expected`` (what ``factory predict`` names with
    ``model``)."""
    from factory.formats import scores_on_test
    from factory.runtime.model import ExportedModel

    ort_file, config = write_ort(model, folder, target_platform)
    report = folder / f"{model.stem}.mobile_usability.txt"
    may_help = usability(model, report)
    got = ExportedModel.open(ort_file, 1).top1([path for path, _ in images])
    return MobileExport(ort_file.name, config.name, report.name, may_help, target_platform, len(images),
                        *scores_on_test(got, images, expected))


def target_platform(machines: tuple[str, ...]) -> str:
    """The converter's platform for a device profile's ``machine`` values."""
    return "arm" if {"aarch64", "arm64"} & set(machines) else "amd64"
