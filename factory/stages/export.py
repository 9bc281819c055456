"""ONNX export with a parity check, and accuracy-aware quantization with onnxruntime.

Every trained model (the distilled student and each comparison) goes through the same export and
quantization, so they are compared at the precision that would ship. The ONNX file takes a
normalised float32 NCHW batch (``input``, dynamic batch axis) and returns ``logits``. Everything
needed to run it with onnxruntime alone is in its metadata: class names, the full evaluation
preprocessing (see :meth:`factory.data.Preprocess.metadata`), architecture and precision; the
published copy also gets the recipe hash, the teacher and the factory version.

Decisions are made on the validation split (the check split), never on the test split: a quantized
model is rejected only when its top-1 drop against the FP32 model, paired image by image, is beyond
``export.max_accuracy_drop`` outside the noise (:func:`factory.decide.noise.drop_beyond`: the low end of the drop's
90% paired interval above the limit, the build's one notion of noise). Before giving up,
the fewest layers are kept in float, the most sensitive first by measured per-layer quantization error.
A rejected quantized model is deleted, so it cannot be published (the remedy ladder: :mod:`factory.quant.ladder`).
Each export also records every
published file's predictions and negative log-likelihoods on the validation images, for the decision of
which model ships.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from factory.context import Runtime
from factory.data import EvalImages, Preprocess
from factory.errors import ExportError
from factory.evaluate import parity
from factory.models import load_trained
from factory.onnx_tools import export_onnx, onnx_metadata
from factory.quant.quantizers import quantization_method
from factory.quant.ladder import accuracy_aware_quantize, check_scores
from factory.quant.qat_distill import QatPlan, QatSource, qat_distill
from factory.quant.results import Quantization
from factory.stage import Done, Plan, Stage, StageResult
from factory.train import TrainedModel

if TYPE_CHECKING:
    from factory.recipe import Recipe


@dataclass(frozen=True)
class ExportPlan(Plan):
    opset: int
    parity_atol: float
    quantize: str | None
    """The quantization to try ('static_int8', 'dynamic_int8', 'fp16'), or None for FP32 only."""
    calibration: str | None
    """Static INT8 only: the calibration method tried first."""
    calibration_images: int | None
    max_accuracy_drop: float | None
    reduce_range: bool = False
    """Static INT8: 7-bit weights, the device profile's choice (:attr:`factory.profiles.DeviceProfile.reduce_range`)."""
    int8_reference: bool = False
    """Static INT8: judge quantized files by onnxruntime's QDQ reference (the graph unoptimized), not this host's
    kernels, which overflow 16-bit sums with full-range weights (x86 without VNNI) where the profile's device
    computes exactly."""
    qat: QatPlan | None = None
    """Static INT8: the quantization-aware fine-tune tried after equalization (None: not tried)."""

    @classmethod
    def from_recipe(cls, recipe: Recipe, int8_exact_here: bool) -> ExportPlan:
        """``int8_exact_here``: whether this host's INT8 kernels compute what a QDQ file defines
        (:func:`factory.quant.qat.int8_conv_exact`, probed once by the caller: a plan runs no session)."""
        e = recipe.export
        method = quantization_method(recipe)
        static = method == "static_int8"
        device = recipe.budget.device()
        reference = static and device.int8_exact and not device.reduce_range and not int8_exact_here
        return cls(e.opset, e.parity_atol, method, e.calibration if static else None,
                   e.calibration_images if static else None, e.max_accuracy_drop if method else None,
                   static and device.reduce_range, reference, QatPlan.from_recipe(recipe) if static else None)


@dataclass(kw_only=True)
class Exported(StageResult):
    architecture: str
    preprocess: Preprocess
    parity: dict
    quantization: Quantization | None = None
    files: list[str] = field(default_factory=list)
    """The ONNX files of this export: ``model.onnx`` (FP32) and the accepted quantized file, if any."""
    val_labels: list[int] = field(default_factory=list)
    """The labels of the check (validation) split, in the order of ``val_predictions``."""
    val_predictions: dict[str, list[int]] = field(default_factory=dict)
    """Each file of ``files``: its top-1 prediction on each image of the check split."""
    val_nll: dict[str, list[float]] = field(default_factory=dict)
    """Each file of ``files``: its negative log-likelihood of the true class on each image of the check split."""


EXPORT = Stage("export", Exported, __name__, ("torch", "onnx", "onnxscript", "onnxruntime"))


def export_model(rt: Runtime, plan: ExportPlan, name: str, trained: Done[TrainedModel],
                 qat_source: QatSource | None = None) -> Done[Exported]:
    """Export one trained model to ONNX, checked for parity, and quantize it with accuracy-aware fallback
    (see :func:`accuracy_aware_quantize`); records each file's predictions on the check split.
    ``qat_source``: what the model's quantization-aware fine-tune learns from (None: that remedy is not
    tried, as for the teacher)."""
    qat_source = qat_source if plan.qat else None

    def run(work: Path) -> Exported:
        model, preprocess = load_trained(trained)
        fp32 = work / "model.onnx"
        metadata = onnx_metadata(trained.result.model, preprocess, rt.data.classes, plan.opset)
        check_set = rt.eval_images("check", preprocess)
        check = export_checked(model, preprocess, fp32, metadata, plan, name, check_set)
        fp32_check = check_scores(fp32, preprocess, check_set)
        scores = {fp32.name: fp32_check}
        quant = None
        if plan.quantize:
            qat_fit = qat_source and functools.partial(qat_distill, rt, plan.qat, qat_source, trained, metadata)
            quant, quantized = accuracy_aware_quantize(rt, plan, fp32, preprocess, fp32_check, qat_fit)
            if quant.file:
                scores[quant.file] = quantized
        return Exported(architecture=trained.result.model, preprocess=preprocess, parity=check, quantization=quant,
                        files=list(scores), val_labels=fp32_check.labels.tolist(),
                        val_predictions={f: s.predictions.tolist() for f, s in scores.items()},
                        val_nll={f: s.nll.tolist() for f, s in scores.items()})

    inputs = {"model": trained, "data": rt.data.fingerprint, **(qat_source.inputs() if qat_source else {})}
    return rt.cache.run(EXPORT, plan, inputs, run)


def export_checked(model: torch.nn.Module, preprocess: Preprocess, fp32: Path, metadata: dict[str, str],
                   plan: ExportPlan, name: str, check_set: EvalImages) -> dict:
    """Export ``model`` to ``fp32`` and return its :func:`parity` on ``check_set``; ExportError naming ``name``
    when its outputs differ from PyTorch beyond ``plan.parity_atol`` or any top-1 changes."""
    export_onnx(model, preprocess, fp32, metadata, plan.opset)
    check = parity(model, preprocess, fp32, check_set)
    if check["max_abs_diff"] > plan.parity_atol or check["top1_agreement"] < 1.0:
        raise ExportError(
            f"{name}: ONNX output differs from PyTorch (max |diff| {check['max_abs_diff']:.2e} > "
            f"export.parity_atol {plan.parity_atol:g}, top-1 agreement {check['top1_agreement']:.3f}); "
            f"try another export.opset or raise export.parity_atol"
        )
    return check
