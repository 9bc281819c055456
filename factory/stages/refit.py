"""Refit: the method the build chose, trained again on every labelled image (train + validation).

A decision needs held-out images, the shipped model does not: once the validation split has said which
method ships and how it quantizes, the same method is trained once more, with the same plan, on the training
images and the validation images together (12 more images per class on the embedded default: 25% more data).
Nothing is decided on the refit model: its quantization is the attempt the chosen model's export accepted
(calibration method, equalization, layers kept in float), calibrated on the same training images; its ONNX
file is checked for parity with PyTorch like every export; its test accuracy is benchmarked like every file.

The teacher of a distilling method stays the one the build adapted (on the training images only); its cached
outputs are recomputed over the refit's training images. The refit's export reads the build's own runtime:
calibration images from the same training split, parity on the same validation images as the chosen model's
export (a numerical check of the ONNX file, not a score).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

from factory.stage import Done, Plan, Stage
from factory.context import Runtime
from factory.errors import ExportError
from factory.models import load_trained
from factory.onnx_tools import calibration_batches, onnx_metadata
from factory.quant.quantizers import quantize, quantized_file
from factory.stages.baselines import BaselinePlan, train_baseline
from factory.stages.distill import DistillPlan, distill_student
from factory.quant.results import QuantAttempt
from factory.stages.export import Exported, ExportPlan, export_checked
from factory.stages.teacher import AdaptedTeacher, TeacherCachePlan, TeacherPlan, adapt_teacher, cache_teacher_outputs
from factory.task import TaskData


def refit_data(data: TaskData) -> TaskData:
    """``data`` with its validation images moved into the training images (module doc), under a fingerprint of
    its own: no validation split is left, so nothing can be decided or logged on images the refit trains on."""
    def moved(fingerprint: str) -> str:
        return hashlib.sha256(f"{fingerprint}|refit: val in train".encode()).hexdigest()[:20]

    return dataclasses.replace(data, train=data.train + data.val, val=[], fingerprint=moved(data.fingerprint),
                               real_fingerprint=data.real_fingerprint and moved(data.real_fingerprint))


def refit_trained(rt: Runtime, name: str, plan: TeacherPlan | BaselinePlan | DistillPlan,
                  teacher: Done[AdaptedTeacher], teacher_cache: TeacherCachePlan | None) -> list[tuple[str, Done]]:
    """The method ``name`` (a model name of the build: 'distilled', 'scratch', ...) trained with its own ``plan``
    on the training and validation images of ``rt`` (the build's runtime), a distilling method from ``teacher``
    (its outputs cached again when ``teacher_cache``): (label, output) of each stage it ran, the model last."""
    refit = rt.with_data(refit_data(rt.data))
    label = f"refit: {name}"
    if isinstance(plan, TeacherPlan):
        return [(label, adapt_teacher(refit, plan))]
    if isinstance(plan, BaselinePlan):
        return [(label, train_baseline(refit, plan))]
    runs, cached = [], None
    if teacher_cache is not None:
        cached = cache_teacher_outputs(refit, teacher_cache, teacher)
        runs.append(("refit: teacher cache", cached))
    return [*runs, (label, distill_student(refit, plan, teacher, cached))]


@dataclass(frozen=True)
class RefitExportPlan(Plan):
    export: ExportPlan
    calibration: str | None
    """The accepted attempt's settings (None: FP32 only, the chosen model had no accepted quantized file)."""
    float_nodes: tuple[str, ...]
    equalization: str | None

    @classmethod
    def decided(cls, plan: ExportPlan, chosen: Exported) -> RefitExportPlan:
        """The export the chosen model's quantization decided: its used attempt, replayed."""
        used = used_attempt(chosen)
        if used is None:
            return cls(plan, None, (), None)
        return cls(plan, used.calibration, tuple(used.float_nodes), used.equalization)


def used_attempt(exported: Exported) -> QuantAttempt | None:
    """The quantization attempt whose file ``exported`` kept (None: no quantized file)."""
    q = exported.quantization
    if q is None or q.file is None:
        return None
    return next(a for a in q.attempts if a.used)


REFIT_EXPORT = Stage("refit_export", Exported, __name__, ("torch", "onnx", "onnxscript", "onnxruntime"))


def export_refit(rt: Runtime, plan: RefitExportPlan, name: str, trained: Done, chosen: Exported) -> Done[Exported]:
    """The refit model ``trained`` exported to ONNX (parity checked) and quantized as ``plan`` replays; ``rt``
    is the build's runtime (calibration images from its training split, parity on its validation images)."""
    used = used_attempt(chosen)
    if used is not None and used.qat_epochs:
        raise ExportError(f"{name}: the refit cannot replay a quantization-aware fine-tune; set refit: false")

    def run(work: Path) -> Exported:
        model, preprocess = load_trained(trained)
        fp32 = work / "model.onnx"
        e = plan.export
        metadata = onnx_metadata(trained.result.model, preprocess, rt.data.classes, e.opset)
        check = export_checked(model, preprocess, fp32, metadata, e, name, rt.eval_images("check", preprocess))
        files, quant = [fp32.name], None
        if used is not None:
            static = e.quantize == "static_int8"
            calibration = calibration_batches(rt, preprocess, e.calibration_images) if static else None
            out = work / quantized_file(e.quantize)
            quantize(e.quantize, fp32, out, calibration, plan.calibration, list(plan.float_nodes), plan.equalization,
                     e.reduce_range)
            files.append(out.name)
            quant = dataclasses.replace(chosen.quantization, file=out.name, qat=None,
                                        checked_on="decided before the refit, on the validation split")
        return Exported(architecture=trained.result.model, preprocess=preprocess, parity=check, quantization=quant,
                        files=files)

    return rt.cache.run(REFIT_EXPORT, plan, {"model": trained, "data": rt.data.fingerprint}, run)
