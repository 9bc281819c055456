"""Quantization-aware distillation: the export stage's remedy after post-training INT8, plain and equalized,
has lost more than ``export.max_accuracy_drop`` on the validation split.

The trained model is fine-tuned for ``export.qat_epochs`` through :class:`factory.quant.qat.QuantSim`, the static
INT8 model onnxruntime will run (its QDQ placement, activation scales calibrated once and then fixed,
per-channel symmetric INT8 weights, 7-bit where the device profile says so, rebuilt from the parameters every
step), with the objective that trained
it, on the same views: a distilled student against the teacher's cached outputs with the distillation loss,
a baseline with cross-entropy on the labels. The fine-tuned model is written as a QDQ file with the
simulation's scales (:func:`factory.quant.qat.export_qat`) and checked against the simulation; its FLOPs and wall
time count in its method's compute.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from factory.stage import Done, Plan
from factory.context import Runtime
from factory.data import Preprocess, ViewPlan
from factory.console import log
from factory.losses import DistillLoss, LossSpec
from factory.models import feature_dim, load_trained
from factory.quant.qat import QuantSim, export_qat, qat_parity, simulate_int8
from factory.quant.results import QatRun
from factory.stages.distill import DistillObjective, student_training, teacher_outputs
from factory.stages.teacher import AdaptedTeacher, TeacherCache
from factory.train import TrainedModel, TrainSettings, param_groups, train_loop

if TYPE_CHECKING:
    from factory.recipe import Recipe

PARITY_STEPS = 8
"""How far the QAT file's logits may differ from the simulation's, in steps of their quantization, before a
warning (the simulation sums in another order than onnxruntime, so values near a rounding boundary land one
step off, and the steps add up through deep networks). The file is judged on validation either way."""

QAT_LR_FRACTION = 0.01
"""The default quantization-aware learning rate as a fraction of the distillation's: NVIDIA's QAT recipe
(pytorch-quantization, TensorRT) fine-tunes at about 1% of the training rate. At 10%, efficientnet_b0 on
flowers12 fell from 51 to 42% validation accuracy in its first epoch and never got back to where post-training
quantization started; at 1% it ended above it (benchmarks/quantize.py)."""


@dataclass(frozen=True)
class QatPlan(Plan):
    train: TrainSettings
    lr: float
    views: ViewPlan
    loss: LossSpec
    reduce_range: bool
    """7-bit weights, as the export quantizes for the device profile
    (:attr:`factory.profiles.DeviceProfile.reduce_range`)."""

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> QatPlan | None:
        """The quantization-aware fine-tune of ``recipe``'s students; None when ``export.qat_epochs`` is 0."""
        e, d = recipe.export, recipe.distill
        if not e.qat_epochs:
            return None
        train, views = student_training(recipe)
        train = dataclasses.replace(train, epochs=e.qat_epochs, warmup_epochs=0.0, budget=None)
        return cls(train, e.qat_lr or d.lr * QAT_LR_FRACTION, views,
                   LossSpec.from_recipe(d.weights, d.temperature, d.proj_dim, d.proj_hidden),
                   recipe.budget.device().reduce_range)


@dataclass(frozen=True)
class QatSource:
    """What a model's quantization-aware fine-tune learns from: the teacher (through its cache when there is
    one) for a distilled student; the labels alone (``teacher`` None) for a baseline."""

    teacher: Done[AdaptedTeacher] | None = None
    teacher_cache: Done[TeacherCache] | None = None

    def inputs(self) -> dict[str, Done | str | None]:
        """The stage inputs this source adds to the export's cache key."""
        return {"qat": "teacher" if self.teacher else "labels", "qat_teacher": self.teacher,
                "qat_teacher_cache": self.teacher_cache}


class _QatClassifierObjective(torch.nn.Module):
    """Cross-entropy of the INT8 simulation (a baseline's own objective), in float32."""

    def __init__(self, sim: QuantSim, preprocess: Preprocess):
        super().__init__()
        self.sim, self.preprocess = sim, preprocess

    def forward(self, images, labels, indices, views):
        loss = F.cross_entropy(self.sim(self.preprocess(images)), labels)
        return loss, {"ce": loss.detach()}


def qat_distill(rt: Runtime, plan: QatPlan, source: QatSource, trained: Done[TrainedModel], metadata: dict[str, str],
                calibration: list[np.ndarray], method: str, out: Path, check_images: np.ndarray) -> QatRun:
    """Fine-tune ``trained`` through its static INT8 simulation (calibrated with ``method`` on ``calibration``)
    and write it to ``out`` as a QDQ file with ``metadata``; its parity with the simulation on ``check_images``
    (preprocessed, NCHW) is recorded, with a warning beyond :data:`PARITY_STEPS`."""
    work = out.parent / "qat"
    model, preprocess = load_trained(trained)
    opset = int(metadata.get("opset", 18))
    sim = simulate_int8(model, preprocess.size, calibration, work / "sim", method=method,
                        reduce_range=plan.reduce_range, opset=opset)
    torch.manual_seed(plan.train.seed)
    objective, name = _objective(rt, plan, source, sim, preprocess, trained)
    run = train_loop(objective, param_groups(objective, plan.train.weight_decay, plan.lr), rt.train_views(plan.views),
                     plan.train, rt.device, work, "quantization-aware distillation",
                     rt.val_accuracy_fn(sim, preprocess), rt.num_workers)
    sim.cpu().eval()
    export_qat(sim, out, opset, metadata)
    parity = qat_parity(sim, out, check_images)
    judged = "" if parity["int8_conv_exact"] or plan.reduce_range else "reference_"  # as the export judges it
    steps, agreement = parity[f"{judged}max_diff_steps"], parity[f"{judged}top1_agreement"]
    if steps is not None and steps > PARITY_STEPS:
        log(f"  [yellow]warning[/] the quantization-aware file's logits differ from its simulation's by "
            f"{steps:.1f} quantization steps (top-1 agreement {agreement:.0%}); it is judged on validation like "
            f"every other attempt")
    return QatRun(method, len(run.history), name, run.flops, run.wall_s + run.resumed_wall_s, parity, run.history)


def _objective(rt: Runtime, plan: QatPlan, source: QatSource, sim: QuantSim, preprocess: Preprocess,
               trained: Done[TrainedModel]) -> tuple[torch.nn.Module, str]:
    """The distillation stage's own objective with the student run as its INT8 simulation, in float32 (a
    baseline's: cross-entropy of the simulation)."""
    if source.teacher is None:
        return _QatClassifierObjective(sim, preprocess), "cross-entropy"
    loss = DistillLoss(feature_dim(sim.model), source.teacher.result.feature_dim, plan.loss)
    teacher_fn = teacher_outputs(rt, source.teacher, source.teacher_cache, rt.train_views(plan.views))
    return DistillObjective(sim, preprocess, loss, teacher_fn, features=QuantSim.pooled_and_logits,
                            mixed_precision=False), "distillation"
