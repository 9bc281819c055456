"""Benchmark exported models: onnxruntime latency (the profile's provider, fixed threads, sequential
execution, warmup, percentiles, peak memory) at batch 1 and ``bench.batch_size``, PyTorch eager latency
for reference, and test accuracy."""

from __future__ import annotations

from pathlib import Path

from factory.cache import StageOutput
from factory.context import BuildContext
from factory.data import Preprocess
from factory.latency import available_provider, eager_latency, onnx_latency
from factory.models import load_trained
from factory.profiles import get_profile
from factory.stages.export import onnx_logits, top1


def bench_threads(ctx: BuildContext) -> int:
    r = ctx.recipe
    return r.bench.threads or r.budget.threads or get_profile(r.budget.profile).threads


def benchmark(ctx: BuildContext, export: StageOutput, filename: str, name: str,
              model_stage: StageOutput | None = None) -> StageOutput:
    """Accuracy on the test split and latency of one ONNX file; with ``model_stage``, eager latency too."""
    b = ctx.recipe.bench
    threads = bench_threads(ctx)
    wanted = get_profile(ctx.recipe.budget.profile).execution_provider
    provider = available_provider(wanted)

    def run(work: Path) -> dict:
        preprocess = Preprocess.from_dict(export.info["preprocess"])
        path = export.file(filename)
        logits, labels = onnx_logits(path, preprocess, ctx.eval_images("test", preprocess.size), threads)
        latency = onnx_latency(path, preprocess.size, threads, provider, 1, b.warmup, b.runs, b.min_time_s)
        batched = onnx_latency(path, preprocess.size, threads, provider, b.batch_size, max(1, b.warmup // 4),
                               max(1, b.runs // 4), b.min_time_s / 2)
        info = {"name": name, "file": filename, "accuracy": top1(logits, labels), "test_images": len(labels),
                "latency_ms": latency, "latency_ms_batch": batched, "size_mb": path.stat().st_size / 2**20,
                "threads": threads, "provider": provider, "profile_provider": wanted}
        if model_stage is not None:
            model, _ = load_trained(model_stage)
            info["eager_latency_ms"] = eager_latency(model, preprocess.size, threads, 1, max(1, b.warmup // 2),
                                                     max(1, b.runs // 4), b.min_time_s / 2)
        return info

    return ctx.cache.run(f"bench_{name}", b.model_dump(mode="json") | {"file": filename, "threads": threads,
                         "provider": provider, "eager": model_stage is not None},
                         {"export": export, "data": ctx.data.fingerprint}, run)
