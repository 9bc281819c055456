"""Benchmark exported models: onnxruntime latency (fixed threads, warmup, percentiles) and test accuracy."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from factory.cache import StageOutput
from factory.context import BuildContext
from factory.data import Preprocess
from factory.profiles import get_profile
from factory.stages.export import onnx_logits, session, top1


def measure_latency(path: Path, size: int, threads: int, provider: str = "CPUExecutionProvider",
                    batch_size: int = 1, warmup: int = 20, runs: int = 200, min_time_s: float = 2.0) -> dict:
    """Latency of one ``session.run`` in milliseconds: at least ``runs`` runs and ``min_time_s`` seconds."""
    sess = session(path, threads, provider)
    x = {"input": np.random.default_rng(0).standard_normal((batch_size, 3, size, size), dtype=np.float32)}
    for _ in range(warmup):
        sess.run(None, x)
    times = []
    start = time.perf_counter()
    while len(times) < runs or time.perf_counter() - start < min_time_s:
        t = time.perf_counter()
        sess.run(None, x)
        times.append((time.perf_counter() - t) * 1000)
    ms = np.array(times)
    return {"batch_size": batch_size, "runs": len(ms), "p50": float(np.percentile(ms, 50)),
            "p90": float(np.percentile(ms, 90)), "p99": float(np.percentile(ms, 99)),
            "mean": float(ms.mean()), "std": float(ms.std())}


def bench_threads(ctx: BuildContext) -> int:
    r = ctx.recipe
    return r.bench.threads or r.budget.threads or get_profile(r.budget.profile).threads


def benchmark(ctx: BuildContext, export: StageOutput, filename: str, name: str) -> StageOutput:
    """Accuracy on the test split and latency at batch 1 and ``bench.batch_size`` of one ONNX file."""
    b = ctx.recipe.bench
    threads = bench_threads(ctx)
    provider = get_profile(ctx.recipe.budget.profile).execution_provider

    def run(work: Path) -> dict:
        p = export.info["preprocess"]
        preprocess = Preprocess(p["size"], tuple(p["mean"]), tuple(p["std"]))
        path = export.file(filename)
        logits, labels = onnx_logits(path, preprocess, ctx.eval_images("test", preprocess.size), threads)
        latency = measure_latency(path, preprocess.size, threads, provider, 1, b.warmup, b.runs, b.min_time_s)
        batched = measure_latency(path, preprocess.size, threads, provider, b.batch_size, max(1, b.warmup // 4),
                                  max(1, b.runs // 4), b.min_time_s / 2)
        return {"name": name, "file": filename, "accuracy": top1(logits, labels), "test_images": len(labels),
                "latency_ms": latency, "latency_ms_batch": batched, "size_mb": path.stat().st_size / 2**20,
                "threads": threads, "provider": provider}

    return ctx.cache.run(f"bench_{name}", b.model_dump(mode="json") | {"file": filename, "threads": threads,
                         "provider": provider}, {"export": export, "data": ctx.data.fingerprint}, run)
