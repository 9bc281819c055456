"""Benchmark exported models: onnxruntime latency (the profile's provider, fixed threads, sequential
execution, warmup, percentiles, peak memory) at batch 1 and ``bench.batch_size``, PyTorch eager latency
for reference, and test accuracy. Keyed by the host (CPU model, ISA flags, onnxruntime and its
providers), so that a shared cache never reports another machine's latency as this one's."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from factory.cache import Done, Plan, Stage, StageResult
from factory.context import Runtime
from factory.host import host_info
from factory.latency import available_provider, eager_latency, onnx_latency
from factory.models import load_trained
from factory.profiles import get_profile
from factory.stages.export import Exported, onnx_logits, top1
from factory.train import TrainedModel

if TYPE_CHECKING:
    from factory.recipe import Recipe


@dataclass(frozen=True)
class BenchPlan(Plan):
    warmup: int
    runs: int
    min_time_s: float
    batch_size: int
    threads: int
    provider: str
    host: tuple[tuple[str, str], ...]

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> BenchPlan:
        b, budget = recipe.bench, recipe.budget
        wanted = get_profile(budget.profile).execution_provider
        host = tuple((k, str(v)) for k, v in host_info().items())
        return cls(b.warmup, b.runs, b.min_time_s, b.batch_size,
                   b.threads or budget.threads or get_profile(budget.profile).threads,
                   available_provider(wanted), host)


@dataclass(kw_only=True)
class Benchmark(StageResult):
    file: str
    precision: str
    accuracy: float
    test_images: int
    latency_ms: dict
    latency_ms_batch: dict
    size_mb: float
    threads: int
    provider: str
    host: dict
    eager_latency_ms: dict | None = None


BENCH = Stage("bench", Benchmark, __name__, ("onnxruntime", "torch"))


def benchmark(rt: Runtime, plan: BenchPlan, export: Done[Exported], filename: str,
              trained: Done[TrainedModel] | None = None) -> Done[Benchmark]:
    """Accuracy on the test split and latency of one ONNX file; with ``trained``, PyTorch eager latency too."""

    def run(work: Path) -> Benchmark:
        preprocess = export.result.preprocess
        path = export.file(filename)
        logits, labels = onnx_logits(path, preprocess, rt.eval_images("test", preprocess), plan.threads)
        latency = onnx_latency(path, preprocess.size, plan.threads, plan.provider, 1, plan.warmup, plan.runs,
                               plan.min_time_s)
        batched = onnx_latency(path, preprocess.size, plan.threads, plan.provider, plan.batch_size,
                               max(1, plan.warmup // 4), max(1, plan.runs // 4), plan.min_time_s / 2)
        eager = None
        if trained is not None:
            model, _ = load_trained(trained)
            eager = eager_latency(model, preprocess.size, plan.threads, 1, max(1, plan.warmup // 2),
                                  max(1, plan.runs // 4), plan.min_time_s / 2)
        quant = export.result.quantization
        precision = quant.label if quant and filename == quant.file else "fp32"
        return Benchmark(file=filename, precision=precision, accuracy=top1(logits, labels), test_images=len(labels),
                         latency_ms=latency, latency_ms_batch=batched, size_mb=path.stat().st_size / 2**20,
                         threads=plan.threads, provider=plan.provider, host=dict(plan.host),
                         eager_latency_ms=eager)

    inputs = {"export": export, "file": filename, "eager": trained, "data": rt.data.fingerprint}
    return rt.cache.run(BENCH, plan, inputs, run)
