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
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import onnx
import torch
from onnxruntime.quantization import qdq_loss_debug
from onnxruntime.quantization.quant_utils import DEQUANT_OUTPUT_SUFFIX, QUANT_INPUT_SUFFIX

from factory.stage import Done, Plan, Stage, StageResult
from factory.context import Runtime
from factory.data import EvalImages, Preprocess
from factory.equalize import has_relu6_pairs
from factory.errors import ExportError
from factory.runtime.session import make_session
from factory.qat_distill import QatPlan, QatSource, qat_distill
from factory.quantization import QatRun, QuantAttempt, Quantization
from factory.models import load_trained
from factory.onnx_tools import (
    CALIBRATION,
    PRECISION_LABEL,
    Calibration,
    calibration_batches,
    export_onnx,
    onnx_logits,
    onnx_metadata,
    pre_process,
    prepare_for_int8,
    quantize,
    quantize_qdq,
    quantization_method,
    quantized_file,
    quiet_quantizer,
    spread_images,
)
from factory.decide.noise import drop_beyond
from factory.stats import Interval
from factory.train import TrainedModel

if TYPE_CHECKING:
    from factory.recipe import Recipe


def parity(model: torch.nn.Module, preprocess: Preprocess, path: Path, dataset: EvalImages, limit: int = 64) -> dict:
    """Max |logit| difference and top-1 agreement between PyTorch and onnxruntime on real images."""
    subset = torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))
    batch = torch.stack([subset[i][0] for i in range(len(subset))])
    x = preprocess(batch)
    with torch.inference_mode():
        expected = model.cpu().eval()(x).numpy()
    got = make_session(path, 2).run(None, {"input": x.numpy()})[0]
    return {"images": len(subset), "max_abs_diff": float(np.abs(expected - got).max()),
            "top1_agreement": float((expected.argmax(1) == got.argmax(1)).mean())}


FLOAT_LAYER_OPS = ("Conv", "Gemm", "MatMul")
"""The layers that can be kept in float when quantization loses too much."""
MAX_FLOAT_LAYERS = 8


def float_layer_cap(layers: int) -> int:
    """The most layers kept in float: a quarter of them, at most :data:`MAX_FLOAT_LAYERS`, at least one."""
    return max(1, min(MAX_FLOAT_LAYERS, layers // 4))


def layer_nodes(path: Path) -> list[str]:
    """The Conv, Gemm and MatMul nodes of ``path``, in graph order (node names survive quant_pre_process)."""
    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type in FLOAT_LAYER_OPS]


def _sqnr(x: np.ndarray | list[np.ndarray], y: np.ndarray | list[np.ndarray]) -> float:
    """qdq_loss_debug's SQNR in dB, but infinite when nothing changed: the module gives all-zero tensors (the
    last convolution of a zero-initialised residual branch) 0 dB, which would rank them the most sensitive."""
    xs, ys = ([x], [y]) if isinstance(x, np.ndarray) else (x, y)
    if all(np.array_equal(a, b) for a, b in zip(xs, ys, strict=True)):
        return math.inf
    return qdq_loss_debug.compute_signal_to_quantization_noice_ratio(x, y)


def static_sensitivity(fp32: Path, calibration: list[np.ndarray], method: str, batches: list[np.ndarray],
                       equalization: str | None = None, reduce_range: bool = False) -> dict[str, float]:
    """How much static INT8 (calibrated with ``method``) hurts each Conv/Gemm/MatMul node of ``fp32``: the
    lowest SQNR (dB; lower is more sensitive) of its weight and of its output activation's local quantization
    error (averaged over ``batches``), measured with onnxruntime's ``qdq_loss_debug``. A node whose weight and
    output stay float (not quantized) scores infinity."""
    debug = qdq_loss_debug
    with tempfile.TemporaryDirectory(dir=fp32.parent, prefix=".sensitivity-") as tmp:
        pre, qdq, augmented = (str(Path(tmp) / name) for name in ("pre.onnx", "qdq.onnx", "augmented.onnx"))
        with quiet_quantizer():
            prepare_for_int8(fp32, Path(pre), calibration, method, [], equalization, reduce_range)
            quantize_qdq(Path(pre), Path(qdq), calibration, method, [], reduce_range)
            weights = debug.compute_weight_error(debug.create_weight_matching(pre, qdq), _sqnr)
        debug.modify_model_output_intermediate_tensors(qdq, augmented, ["QuantizeLinear", "DequantizeLinear"])
        activations = _activation_sqnr(augmented, _folded_activations(onnx.load(pre).graph), batches)
        graph = onnx.load(qdq).graph
    scores = {}
    for node in (n for n in graph.node if n.op_type in FLOAT_LAYER_OPS):
        weight = weights.get(node.input[1].removesuffix(DEQUANT_OUTPUT_SUFFIX), math.inf)
        scores[node.name] = min(weight, activations.get(node.output[0].removesuffix(QUANT_INPUT_SUFFIX), math.inf))
    return scores


def _folded_activations(graph: onnx.GraphProto) -> dict[str, tuple[float, float]]:
    """The outputs of Relu and Clip nodes and their range. The QDQ quantizer removes these activations and
    lets the quantization of their output (range from 0, or the clip's) do their clamping, so the tensor
    before that quantization is the unclamped one: it is clamped before its quantization error is measured."""
    consts = {i.name: float(onnx.numpy_helper.to_array(i).item()) for i in graph.initializer
              if math.prod(i.dims) == 1}
    folded = {}
    for node in graph.node:
        if node.op_type == "Relu":
            folded[node.output[0]] = (0.0, math.inf)
        elif node.op_type == "Clip":
            bounds = [*node.input[1:], "", ""]
            folded[node.output[0]] = (consts.get(bounds[0], -math.inf), consts.get(bounds[1], math.inf))
    return folded


def _activation_sqnr(augmented: str, folded: dict[str, tuple[float, float]],
                     batches: list[np.ndarray]) -> dict[str, float]:
    """Each quantized activation's SQNR (dB) before vs after its QuantizeLinear/DequantizeLinear pair, averaged
    over ``batches`` (one at a time: the augmented model returns every quantized activation of a batch)."""
    debug = qdq_loss_debug
    errors: dict[str, list[float]] = {}
    for batch in batches:
        matched = debug.create_activation_matching(debug.collect_activations(augmented, Calibration([batch])))
        for name, match in matched.items():
            low, high = folded.get(name, (-math.inf, math.inf))
            before = [np.clip(t, low, high) for t in match["pre_qdq"]]
            errors.setdefault(name, []).append(_sqnr(before, match["post_qdq"]))
    return {name: float(np.mean(values)) for name, values in errors.items()}


def measured_sensitivity(method: str, fp32: Path, nodes: list[str], images: np.ndarray) -> dict[str, float]:
    """For each of ``nodes``: the mean KL divergence on ``images`` from ``fp32``'s predictions to those of
    ``fp32`` quantized by ``method`` with only that node kept in float (lower: keeping it in float helps more).
    Used for dynamic INT8 and FP16, whose graphs have no QuantizeLinear/DequantizeLinear pairs for
    onnxruntime's ``qdq_loss_debug`` to compare (dynamic INT8 quantizes activations inside
    ConvInteger/MatMulInteger, FP16 has none); KL to FP32 rather than NLL on the labels, as it measures what
    quantization changes, not how right the model is."""
    reference = _log_softmax(make_session(fp32, 2).run(None, {"input": images})[0])
    scores = {}
    with tempfile.TemporaryDirectory(dir=fp32.parent, prefix=".sensitivity-") as tmp:
        out = Path(tmp) / "model.onnx"
        for node in nodes:
            quantize(method, fp32, out, None, None, [node])
            quantized = _log_softmax(make_session(out, 2).run(None, {"input": images})[0])
            scores[node] = float((np.exp(reference) * (reference - quantized)).sum(1).mean())
    return scores


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(1, keepdims=True))


def sensitivity_ranking(method: str, fp32: Path, calibration: list[np.ndarray] | None, calib_method: str | None,
                        images: np.ndarray, equalization: str | None = None, reduce_range: bool = False) -> list[str]:
    """The Conv/Gemm/MatMul nodes ``method`` quantizes, most sensitive first on ``images`` (ties in graph
    order): :func:`static_sensitivity` for static INT8, :func:`measured_sensitivity` otherwise."""
    if method == "static_int8":
        batches = [images[i:i + 8] for i in range(0, len(images), 8)]
        scores = static_sensitivity(fp32, calibration, calib_method, batches, equalization, reduce_range)
    else:  # quantize_dynamic turns each Gemm into '<name>_MatMul' (and an Add) before excluding nodes
        nodes = [f"{n.name}_MatMul" if n.op_type == "Gemm" and method == "dynamic_int8" else n.name
                 for n in onnx.load(str(fp32)).graph.node if n.op_type in FLOAT_LAYER_OPS]
        scores = measured_sensitivity(method, fp32, nodes, images)
    ranked = [name for name in scores if math.isfinite(scores[name])]
    return sorted(ranked, key=scores.__getitem__)


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
        (:func:`factory.qat.int8_conv_exact`, probed once by the caller: a plan runs no session)."""
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
    return CheckScores(logits.argmax(1), -_log_softmax(logits)[np.arange(len(labels)), labels], labels)


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
    (:func:`factory.qat_distill.qat_distill`), None when that remedy is not tried."""
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
       lost least (:mod:`factory.qat_distill`);
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
