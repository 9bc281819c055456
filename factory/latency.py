"""Latency measurement. onnxruntime runs in a fresh child process (``python -m factory.latency``) so that
its peak memory is the model's own and not the build's; PyTorch eager runs in-process for reference.

Both take at least ``runs`` timed runs and ``min_time_s`` seconds after ``warmup`` runs, with a fixed
thread count, and report milliseconds: p50, p90, p99, mean, std.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np


def _time(fn: Callable[[], object], warmup: int, runs: int, min_time_s: float) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < runs or time.perf_counter() - start < min_time_s:
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    ms = np.array(times)
    return {"runs": len(ms), "p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean()), "std": float(ms.std())}


def available_provider(wanted: str) -> str:
    """``wanted`` if this onnxruntime build has it, else the CPU provider."""
    import onnxruntime as ort

    return wanted if wanted in ort.get_available_providers() else "CPUExecutionProvider"


def onnx_latency(path: str, size: int, threads: int, provider: str = "CPUExecutionProvider", batch_size: int = 1,
                 warmup: int = 20, runs: int = 200, min_time_s: float = 2.0) -> dict:
    """Latency of ``session.run`` on an ONNX classifier, measured in a child process; adds peak memory."""
    args = json.dumps({"path": str(path), "size": size, "threads": threads, "provider": provider,
                       "batch_size": batch_size, "warmup": warmup, "runs": runs, "min_time_s": min_time_s})
    done = subprocess.run([sys.executable, "-m", "factory.latency", args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"latency measurement of {path} failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def make_session(path, threads: int, provider: str = "CPUExecutionProvider"):
    """An onnxruntime session with fixed intra-op threads, sequential execution, all graph optimisations."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=[provider])


def _peak_rss_kb() -> int:
    """This process's peak resident memory (VmHWM; ru_maxrss would include the parent's peak before exec)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _child(spec: dict) -> dict:
    before_kb = _peak_rss_kb()
    session = make_session(spec["path"], spec["threads"], spec["provider"])
    x = {"input": np.random.default_rng(0).standard_normal(
        (spec["batch_size"], 3, spec["size"], spec["size"]), dtype=np.float32)}
    result = _time(lambda: session.run(None, x), spec["warmup"], spec["runs"], spec["min_time_s"])
    peak_kb = _peak_rss_kb()
    return result | {"batch_size": spec["batch_size"], "threads": spec["threads"],
                     "provider": session.get_providers()[0], "peak_rss_mb": peak_kb / 1024,
                     "model_memory_mb": (peak_kb - before_kb) / 1024}


def eager_latency(model, size: int, threads: int, batch_size: int = 1, warmup: int = 10, runs: int = 50,
                  min_time_s: float = 1.0) -> dict:
    """PyTorch eager latency (CPU, inference mode, ``threads`` intra-op threads) for reference."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    model = model.cpu().eval()
    x = torch.randn(batch_size, 3, size, size)
    try:
        with torch.inference_mode():
            return _time(lambda: model(x), warmup, runs, min_time_s) | {"batch_size": batch_size, "threads": threads}
    finally:
        torch.set_num_threads(previous)


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
