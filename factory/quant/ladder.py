"""The remedy ladder of accuracy-aware quantization: post-training quantization, equalization, a
quantization-aware fine-tune, then the most sensitive layers kept in float, each attempt judged against FP32 on the
check (validation) split with the paired rule (:func:`factory.decide.noise.drop_beyond`); a rejected quantized file
is deleted. What judges, quantizes and ranks comes in as values (:class:`QuantTools`), the fine-tune as ``qat_fit``.
The export stage (:mod:`factory.stages.export`) runs it."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import onnx

from factory.data import EvalImages, Preprocess
from factory.decide.noise import drop_beyond
from factory.onnx_tools import calibration_batches, onnx_logits, spread_images
from factory.quant.quantizers import (
    CALIBRATION,
    PRECISION_LABEL,
    pre_process,
    quantize,
    quantized_file,
    quiet_quantizer,
)
from factory.quant.equalize import has_relu6_pairs
from factory.quant.results import QatRun, QuantAttempt, Quantization
from factory.quant.sensitivity import float_layer_cap, layer_nodes, log_softmax, sensitivity_ranking
from factory.stats import Interval

if TYPE_CHECKING:
    from factory.context import Runtime
    from factory.stage import Plan  # the export stage's plan, factory.stages.export.ExportPlan (which imports this)


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


@dataclass(frozen=True)
class QuantTools:
    """What the remedy ladder runs, as values (a test passes fakes): ``judge`` scores a file on the check split
    (:func:`check_scores`), ``quantizer`` writes a quantized file (:func:`factory.quant.quantizers.quantize`), ``ranking``
    orders the layers by sensitivity (:func:`factory.quant.sensitivity.sensitivity_ranking`). The fine-tune is
    ``qat_fit`` of :func:`accuracy_aware_quantize`."""

    judge: Callable[..., CheckScores] = check_scores
    quantizer: Callable[..., None] = quantize
    ranking: Callable[..., list[str]] = sensitivity_ranking


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
    tools: QuantTools = QuantTools()
    done: list[QuantAttempt] = field(default_factory=list)
    accepted: CheckScores | None = None
    qat: QatRun | None = None

    def produce(self, t: _Try) -> None:
        """Write the quantized file of ``t`` to ``out`` (a quantization-aware fine-tune runs once)."""
        if not t.qat:
            self.tools.quantizer(self.method, self.fp32, self.out, self.calibration, t.calibration, t.float_nodes,
                                 t.equalization, self.reduce_range)
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
            scores = self.tools.judge(self.out, self.preprocess, self.check_set, self.reference)
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


def accuracy_aware_quantize(rt: Runtime, plan: Plan, fp32: Path, preprocess: Preprocess,
                            fp32_check: CheckScores | None = None,
                            qat_fit: Callable[..., QatRun] | None = None,
                            tools: QuantTools = QuantTools()) -> tuple[Quantization, CheckScores | None]:
    """Quantize ``fp32`` with ``plan.quantize``, rejecting an attempt only when its top-1 drop on the check
    (validation) split, paired with FP32 image by image, is beyond ``plan.max_accuracy_drop`` outside the noise.

    The remedies, in order (:func:`remedies`), stop at the first attempt within the limit; failing that,
    the accepted attempt that lost least is kept. ``fp32_check``: FP32's :class:`CheckScores`, when
    already computed; ``qat_fit``: the quantization-aware fine-tune (see
    :attr:`_Attempts.qat_fit`; None: not tried); ``tools``: what judges, quantizes and ranks. Returns every
    attempt and the accepted file's :class:`CheckScores`
    (None when all were rejected: the quantized file is then deleted).
    """
    method = plan.quantize
    check_set = rt.eval_images("check", preprocess)
    fp32_predictions, _, labels = fp32_check or tools.judge(fp32, preprocess, check_set)
    calibration = calibration_batches(rt, preprocess, plan.calibration_images) if method == "static_int8" else None
    attempts = _Attempts(method, fp32, fp32.with_name(quantized_file(method)), calibration, plan.max_accuracy_drop,
                         preprocess, check_set, fp32_predictions == labels, labels, plan.reduce_range,
                         plan.int8_reference, qat_fit, tools)
    attempts.first_within(remedies(plan, attempts))
    attempts.qat_file.unlink(missing_ok=True)
    return _verdict(plan, attempts, rt.data.check_split()[0]), attempts.accepted


def remedies(plan: Plan, attempts: _Attempts) -> Iterator[_Try]:
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
    ranked = attempts.tools.ranking(plan.quantize, attempts.fp32, attempts.calibration, best.calibration, images,
                                    best.equalization, plan.reduce_range)
    cap = float_layer_cap(len(layer_nodes(attempts.fp32)))
    yield from (_Try(best.calibration, ranked[:k], best.equalization) for k in range(1, min(cap, len(ranked)) + 1))


def preprocessed_model(fp32: Path) -> onnx.ModelProto:
    """``fp32`` after onnxruntime's pre-processing for quantization (BatchNorm folded into convolutions)."""
    with tempfile.TemporaryDirectory(dir=fp32.parent, prefix=".pre-") as tmp, quiet_quantizer():
        pre = Path(tmp) / "pre.onnx"
        pre_process(fp32, pre)
        return onnx.load(str(pre))


def _verdict(plan: Plan, attempts: _Attempts, checked_on: str) -> Quantization:
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
