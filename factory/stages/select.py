"""Student candidates, measured for the budget: three cached stages.

``select`` counts a student's parameters and MACs at the task's resolution and class count. ``candidate``
exports and quantizes one candidate (from a curated list of edge-friendly timm architectures, filtered by
``student.candidates`` and ``student.exclude``) as the build would ship it for the budget's device profile (the
profile's preset, static INT8; the weights are random and the calibration images seeded noise, since size and
latency depend on neither, so a candidate is built once for every split and task of its resolution and class
count). ``candidate_latency`` measures the exported candidates' latency through onnxruntime with the profile's
threads, every candidate's rounds interleaved (:mod:`factory.latency`), keyed by the host and the measurement
settings, so a second listing is instant. Which candidates fit and are admitted to the search is decided on
these results by :mod:`factory.decide.listing`.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from factory import distributed as dist
from factory.stage import Done, Plan, Stage, StageResult
from factory.context import Runtime
from factory.errors import RecipeError
from factory.latency import Latency, LatencySettings, measure
from factory.models import count_params, create_model
from factory.evaluate import forward_flops_per_image

if TYPE_CHECKING:
    from factory.recipe import Recipe

CANDIDATES = (
    "mobilenetv3_small_050", "mobilenetv3_small_100", "mobilenetv3_large_100", "mobilenetv4_conv_small",
    "mobilenetv2_100", "efficientnet_b0", "efficientnet_lite0", "ghostnet_100", "mnasnet_100", "regnetx_002",
    "regnety_004", "resnet10t", "resnet18", "resnet34", "lcnet_100", "fastvit_t8", "efficientvit_b0",
    "edgenext_xx_small", "mobilevit_xxs", "repvit_m1", "mobileone_s0", "tinynet_e", "hgnetv2_b0",
)
"""Edge-friendly timm architectures (all in the pinned timm), smallest families first."""


@dataclass(frozen=True)
class SelectPlan(Plan):
    """The named student's size at the task resolution (``student.model`` other than auto)."""

    model: str
    image_size: int
    num_classes: int

    @classmethod
    def from_recipe(cls, recipe: Recipe, num_classes: int) -> SelectPlan:
        return cls(recipe.student.model, recipe.data.image_size, num_classes)


@dataclass(kw_only=True)
class StudentChoice(StageResult):
    model: str
    params: int
    macs: int
    image_size: int


SELECT = Stage("select", StudentChoice, __name__, ("torch", "timm"))


def select_student(rt: Runtime, plan: SelectPlan) -> Done[StudentChoice]:
    """Count the named student's parameters and MACs at the task resolution."""

    def run(work: Path) -> StudentChoice:
        model = create_model(plan.model, None, plan.num_classes, field="student.model", image_size=plan.image_size)
        macs = int(forward_flops_per_image(model, plan.image_size) // 2)
        return StudentChoice(model=plan.model, params=count_params(model), macs=macs, image_size=plan.image_size)

    return rt.cache.run(SELECT, plan, {}, run)


# ---- candidates -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CandidatePlan(Plan):
    architecture: str
    image_size: int
    num_classes: int
    quantize: str | None
    calibration: str | None
    calibration_images: int | None
    opset: int


@dataclass(kw_only=True)
class Candidate(StageResult):
    architecture: str
    params: int
    macs: int
    precision: str
    file: str | None
    """The ONNX file in the format that would ship (None when export or quantization failed)."""
    size_mb: float | None
    error: str | None = None


CANDIDATE = Stage("candidate", Candidate, __name__, ("torch", "timm", "onnx", "onnxscript", "onnxruntime"))


@dataclass(frozen=True)
class CandidateLatencyPlan(Plan):
    settings: LatencySettings
    host: tuple[tuple[str, str], ...]


@dataclass(kw_only=True)
class CandidateLatency(StageResult):
    latency: Latency


CANDIDATE_LATENCY = Stage("candidate_latency", CandidateLatency, __name__, ("onnxruntime",))


def candidate_names(include: list[str], exclude: list[str]) -> list[str]:
    """The curated candidates kept by ``include`` (names or glob patterns; an exact timm name outside the
    list counts too) and not dropped by ``exclude``."""
    import timm

    names = list(CANDIDATES)
    if include:
        kept = []
        for pattern in include:
            matched = fnmatch.filter(CANDIDATES, pattern)
            if not matched and pattern in timm.list_models():
                matched = [pattern]
            if not matched:
                raise RecipeError(f"student.candidates: {pattern!r} matches no candidate and is not a timm "
                                  f"architecture; known candidates: {', '.join(CANDIDATES)}")
            kept += [m for m in matched if m not in kept]
        names = kept
    names = [n for n in names if not any(fnmatch.fnmatch(n, p) for p in exclude)]
    if not names:
        raise RecipeError(f"student.exclude {exclude} leaves no candidate; exclude fewer")
    return names


def build_candidate(rt: Runtime, plan: CandidatePlan) -> Done[Candidate]:
    """Export ``plan.architecture`` (random weights: latency and size do not depend on them) as it would ship."""

    def run(work: Path) -> Candidate:
        from factory.data import preprocess_for
        from factory.onnx_tools import export_onnx, noise_calibration_batches, onnx_metadata
        from factory.quant.quantizers import PRECISION_LABEL, quantize, quantized_file

        model = create_model(plan.architecture, None, plan.num_classes, field="student.candidates",
                             image_size=plan.image_size)
        params, macs = count_params(model), int(forward_flops_per_image(model, plan.image_size) // 2)
        preprocess = preprocess_for(model, plan.image_size)
        precision = PRECISION_LABEL[plan.quantize] if plan.quantize else "fp32"
        fp32 = work / "model.onnx"
        classes = [str(i) for i in range(plan.num_classes)]
        try:
            export_onnx(model, preprocess, fp32, onnx_metadata(plan.architecture, preprocess, classes, plan.opset),
                        plan.opset)
            out = fp32
            if plan.quantize:
                out = work / quantized_file(plan.quantize)
                calibration = (noise_calibration_batches(preprocess, plan.calibration_images)
                               if plan.quantize == "static_int8" else None)
                quantize(plan.quantize, fp32, out, calibration, plan.calibration, [])
        except Exception as err:  # one broken candidate must not stop the listing
            return Candidate(architecture=plan.architecture, params=params, macs=macs, precision=precision,
                             file=None, size_mb=None, error=f"{type(err).__name__}: {str(err).splitlines()[0][:200]}")
        return Candidate(architecture=plan.architecture, params=params, macs=macs, precision=precision,
                         file=out.name, size_mb=out.stat().st_size / 2**20)

    return rt.cache.run(CANDIDATE, plan, {}, run)


def measure_candidates(rt: Runtime, plan: CandidateLatencyPlan, image_size: int,
                       candidates: list[Done[Candidate]]) -> dict[str, Latency]:
    """Latency of each exported candidate on this host; the ones not cached are measured together."""
    exported = [c for c in candidates if c.result.file]
    missing = [c for c in exported if rt.cache.cached(CANDIDATE_LATENCY, plan, {"candidate": c}) is None]
    fresh = {}
    if missing and dist.is_main():  # one process measures (others would compete for the CPU); the rest read it
        from factory.console import log

        log(f"  measuring {len(missing)} candidates' latency: {plan.settings.rounds} interleaved rounds, "
            f"{plan.settings.threads} threads")
        measured = measure([(str(c.file(c.result.file)), image_size) for c in missing], plan.settings, memory=False)
        fresh = {c.key: lat for c, lat in zip(missing, measured.latencies)}
    return {c.result.architecture: rt.cache.run(CANDIDATE_LATENCY, plan, {"candidate": c},
                                                lambda work, c=c: CandidateLatency(latency=fresh[c.key])).result.latency
            for c in exported}
