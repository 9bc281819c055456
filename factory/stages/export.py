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
A rejected quantized model is deleted, so it cannot be published. Each export also records every
published file's predictions and negative log-likelihoods on the validation images, for the decision of
which model ships.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import onnx
import torch

from factory.stage import Done, Plan, Stage, StageResult
from factory.context import Runtime
from factory.data import EvalImages, Preprocess
from factory.quant.equalize import has_relu6_pairs
from factory.errors import ExportError
from factory.quant.qat_distill import QatPlan, QatSource, qat_distill
from factory.quant.results import QatRun, QuantAttempt, Quantization
from factory.models import load_trained
from factory.onnx_tools import (
    CALIBRATION,
    PRECISION_LABEL,
    calibration_batches,
    export_onnx,
    onnx_logits,
    onnx_metadata,
    pre_process,
    quantize,
    quantization_method,
    quantized_file,
    quiet_quantizer,
    spread_images,
)
from factory.decide.noise import drop_beyond
from factory.evaluate import parity
from factory.quant.sensitivity import float_layer_cap, layer_nodes, log_softmax, sensitivity_ranking
from factory.stats import Interval
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


class CheckScores(NamedTuple):
    """One ONNX file on the check split, image by image: its top-1 predictions, the negative log-likelihood of
    each label, and the labels."""

    predictions: np.ndarray
    nll: np.ndarray
    labels: np.ndarray


def check_scores(path: Path, preprocess: Preprocess, check_set: EvalImages, reference: bool = False) -> CheckScores:
    """:class:`CheckScores` of an ONNX classifier on ``check_set`` (with ``reference``, as its QDQ definition
    computes them), from one pass over the images."""
    logits, labels = onnx_logits(path, preprocess, check_set, reference=reference)
    return CheckScores(logits.argmax(1), -log_softmax(logits)[np.arange(len(labels)), labels], labels)


SENSITIVITY_IMAGES = 32
"""Validation images the per-layer sensitivity is measured on."""


class _Try(NamedTuple):
    calibration: str | None
    float_nodes: list[str]
    equalization: str | None = None
    qat: bool = False

    @classmethod
    def of(cls, attempt: QuantAttempt) -> _Try:
        return cls(attempt.calibration, attempt.float_nodes, attempt.equalization, bool(attempt.qat_epochs))


@dataclass
class _Attempts:
    """The attempts of one accuracy-aware quantization, each judged against FP32 on the same check images."""

    method: str
    fp32: Path
    out: Path
    calibration: list[np.ndarray] | None
    limit: float
    preprocess: Preprocess
    check_set: EvalImages
    fp32_correct: np.ndarray
    labels: np.ndarray
    reduce_range: bool = False
    reference: bool = False
    qat_fit: Callable[..., QatRun] | None = None
    """``(calibration, method, out, check_images) -> QatRun``: the quantization-aware fine-tune
    (:func:`factory.quant.qat_distill.qat_distill`), None when that remedy is not tried."""
    done: list[QuantAttempt] = field(default_factory=list)
    accepted: CheckScores | None = None
    qat: QatRun | None = None

    def produce(self, t: _Try) -> None:
        """Write the quantized file of ``t`` to ``out`` (a quantization-aware fine-tune runs once)."""
        if not t.qat:
            quantize(self.method, self.fp32, self.out, self.calibration, t.calibration, t.float_nodes, t.equalization,
                     self.reduce_range)
            return
        if self.qat is None:
            images, _ = spread_images(self.check_set, self.preprocess, SENSITIVITY_IMAGES)
            self.qat = self.qat_fit(self.calibration, t.calibration, self.qat_file, images)
            shutil.rmtree(self.out.parent / "qat", ignore_errors=True)
        shutil.copyfile(self.qat_file, self.out)

    @property
    def qat_file(self) -> Path:
        return self.out.with_name("model.qat.onnx")

    def first_within(self, tries: Iterable[_Try]) -> bool:
        """Quantize with each of ``tries`` in order (a generator may look at the attempts so far) up to the
        first accepted one whose drop is within the limit; failing that, keep the accepted attempt (not shown
        to exceed the limit) that lost least. Whether one was accepted; its file is left at ``out``."""
        best: tuple[QuantAttempt, CheckScores] | None = None
        for t in tries:
            self.produce(t)
            scores = check_scores(self.out, self.preprocess, self.check_set, self.reference)
            correct = scores.predictions == self.labels
            exceeds, drop = drop_beyond(self.fp32_correct, correct, self.limit)
            attempt = QuantAttempt(t.calibration, list(t.float_nodes), float(correct.mean()), drop.value, drop.low,
                                   drop.high, drop.confidence, not exceeds, equalization=t.equalization,
                                   qat_epochs=self.qat.epochs if t.qat else 0)
            self.done.append(attempt)
            if not exceeds and (best is None or attempt.drop < best[0].drop):
                best = (attempt, scores)
            if not exceeds and attempt.drop <= self.limit:
                break
        if best is None:
            return False
        attempt, self.accepted = best
        attempt.used = True
        if attempt is not self.done[-1]:
            self.produce(_Try.of(attempt))
        return True

    def interval(self, attempt: QuantAttempt) -> Interval:
        return Interval(attempt.drop, attempt.drop_low, attempt.drop_high, attempt.confidence, len(self.labels))


def accuracy_aware_quantize(rt: Runtime, plan: ExportPlan, fp32: Path, preprocess: Preprocess,
                            fp32_check: CheckScores | None = None,
                            qat_fit: Callable[..., QatRun] | None = None) -> tuple[Quantization, CheckScores | None]:
    """Quantize ``fp32`` with ``plan.quantize``, rejecting an attempt only when its top-1 drop on the check
    (validation) split, paired with FP32 image by image, is beyond ``plan.max_accuracy_drop`` outside the noise.

    The remedies, in order (:func:`remedies`), stop at the first attempt within the limit; failing that,
    the accepted attempt that lost least is kept. ``fp32_check``: FP32's :class:`CheckScores`, when
    already computed; ``qat_fit``: the quantization-aware fine-tune (see
    :attr:`_Attempts.qat_fit`; None: not tried). Returns every attempt and the accepted file's :class:`CheckScores`
    (None when all were rejected: the quantized file is then deleted).
    """
    method = plan.quantize
    check_set = rt.eval_images("check", preprocess)
    fp32_predictions, _, labels = fp32_check or check_scores(fp32, preprocess, check_set)
    calibration = calibration_batches(rt, preprocess, plan.calibration_images) if method == "static_int8" else None
    attempts = _Attempts(method, fp32, fp32.with_name(quantized_file(method)), calibration, plan.max_accuracy_drop,
                         preprocess, check_set, fp32_predictions == labels, labels, plan.reduce_range,
                         plan.int8_reference, qat_fit)
    attempts.first_within(remedies(plan, attempts))
    attempts.qat_file.unlink(missing_ok=True)
    return _verdict(plan, attempts, rt.data.check_split()[0]), attempts.accepted


def remedies(plan: ExportPlan, attempts: _Attempts) -> Iterator[_Try]:
    """What to try, in order, each remedy only when the ones before it missed the limit:

    1. post-training quantization: static INT8 with the plan's calibration method, then the others; the
       other methods as they are;
    2. static INT8 only: cross-layer equalization and bias correction, exact, then through ReLU6 where the
       model has ReLU6 between convolutions, each with the calibrations in the order of their drop so far;
    3. static INT8 with a fine-tune at hand: quantization-aware fine-tuning from the plain calibration that
       lost least (:mod:`factory.quant.qat_distill`);
    4. the k layers most sensitive to quantization (:func:`sensitivity_ranking`, with the post-training
       settings of the smallest drop so far) kept in float, for k = 1, 2, ... up to :func:`float_layer_cap`.
    """
    methods = [None]
    if plan.quantize == "static_int8":
        methods = [plan.calibration] + [m for m in CALIBRATION if m != plan.calibration]
    yield from (_Try(m, []) for m in methods)
    if plan.quantize == "static_int8":
        by_drop = sorted(methods, key=lambda m: min(a.drop for a in attempts.done if a.calibration == m))
        variants = ["exact"] + (["relu6"] if has_relu6_pairs(preprocessed_model(attempts.fp32)) else [])
        for equalization in variants:
            yield from (_Try(m, [], equalization) for m in by_drop)
        if attempts.qat_fit is not None:
            yield _Try(by_drop[0], [], qat=True)
    best = min((a for a in attempts.done if not a.qat_epochs), key=lambda a: a.drop)
    images, _ = spread_images(attempts.check_set, attempts.preprocess, SENSITIVITY_IMAGES)
    ranked = sensitivity_ranking(plan.quantize, attempts.fp32, attempts.calibration, best.calibration, images,
                                 best.equalization, plan.reduce_range)
    cap = float_layer_cap(len(layer_nodes(attempts.fp32)))
    yield from (_Try(best.calibration, ranked[:k], best.equalization) for k in range(1, min(cap, len(ranked)) + 1))


def preprocessed_model(fp32: Path) -> onnx.ModelProto:
    """``fp32`` after onnxruntime's pre-processing for quantization (BatchNorm folded into convolutions)."""
    with tempfile.TemporaryDirectory(dir=fp32.parent, prefix=".pre-") as tmp, quiet_quantizer():
        pre = Path(tmp) / "pre.onnx"
        pre_process(fp32, pre)
        return onnx.load(str(pre))


def _verdict(plan: ExportPlan, attempts: _Attempts, checked_on: str) -> Quantization:
    """The :class:`Quantization` of ``attempts``; a rejected quantized file is deleted."""
    label = PRECISION_LABEL[plan.quantize]
    accepted = attempts.accepted is not None
    n_calib = sum(len(b) for b in attempts.calibration or [])
    fp32_accuracy = float(attempts.fp32_correct.mean())
    result = Quantization(method=plan.quantize, label=label, file=attempts.out.name if accepted else None,
                          accepted=accepted, checked_on=checked_on, fp32_accuracy=fp32_accuracy,
                          attempts=attempts.done, calibration_images=n_calib, qat=attempts.qat,
                          weight_bits=7 if plan.reduce_range else 8, reference=plan.int8_reference)
    if not accepted:
        attempts.out.unlink(missing_ok=True)
        closest = min(attempts.done, key=lambda a: a.drop_low)
        result.reason = (f"every {label} attempt lost more than export.max_accuracy_drop={plan.max_accuracy_drop:g} "
                         f"of top-1 on {checked_on}, outside the noise (the low end of its drop's "
                         f"{closest.confidence:.0%} paired interval above the limit; closest: drop "
                         f"{attempts.interval(closest).points()}); the {label} file was not published, FP32 ships")
    return result
