"""Benchmark every exported file of a build together: test accuracy of each, and onnxruntime latency (the
profile's provider and threads) with the rounds of all files interleaved in one process, so that FP32 against
quantized and the student against its baselines are compared under the same machine minutes
(:mod:`factory.latency`); batch ``bench.batch_size`` latency and PyTorch eager latency for reference.
Keyed by the host (CPU model, ISA flags, onnxruntime and its providers), so that a shared cache never reports
another machine's latency as this one's."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from factory.stage import Done, Plan, Stage, StageResult
from factory.console import log, progress_bar
from factory.context import Runtime
from factory.host import host_info
from factory.evaluate import eager_latency
from factory.latency import HostLoad, Latency, LatencySettings, Ratio, end_to_end, measure, ratio
from factory.models import load_trained
from factory.runtime.session import available_provider
from factory.onnx_tools import onnx_logits, top1
from factory.train import TrainedModel

if TYPE_CHECKING:
    from factory.recipe import Recipe
    from factory.stages.export import Exported


@dataclass(frozen=True)
class BenchPlan(Plan):
    rounds: int
    warmup: int
    runs: int
    min_time_s: float
    noise_band: float
    batch_size: int
    threads: int
    provider: str
    host: tuple[tuple[str, str], ...]

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> BenchPlan:
        b, budget = recipe.bench, recipe.budget
        device = budget.device()
        host = tuple((k, str(v)) for k, v in host_info().items())
        return cls(b.rounds, b.warmup, b.runs, b.min_time_s, b.noise_band, b.batch_size,
                   b.threads or budget.threads or device.threads, available_provider(device.execution_provider), host)

    def settings(self) -> LatencySettings:
        """Batch-1 latency: the figure budgets and choices are decided on."""
        return LatencySettings(self.rounds, self.warmup, self.runs, self.min_time_s, self.threads, self.provider,
                               1, self.noise_band)

    def reference_settings(self, batch_size: int) -> LatencySettings:
        """Fewer, shorter rounds for the figures shown for reference only (larger batch, PyTorch eager)."""
        return replace(self.settings(), rounds=max(3, self.rounds // 3), runs=max(3, self.runs // 4),
                       min_time_s=self.min_time_s / 2, batch_size=batch_size)


@dataclass(kw_only=True)
class FileBench:
    model: str
    """The trained model's name ('distilled', 'scratch', ..., 'teacher')."""
    file: str
    precision: str
    accuracy: float
    """Top-1 on the test split (reported, never decided on)."""
    test_images: int
    latency: Latency
    """Batch 1, the figure budgets and choices are decided on."""
    latency_batch: Latency
    size_mb: float
    eager: Latency | None = None
    """PyTorch eager latency of the trained model (on the FP32 file's row)."""
    end_to_end: Latency | None = None
    """Decode + preprocess + model per image (:func:`factory.latency.end_to_end`), beside the model-only figure."""

    @property
    def peak_memory_mb(self) -> float | None:
        """Peak resident memory of a process running this file alone (None: not measured)."""
        return self.latency.memory.peak_rss_mb if self.latency.memory else None


@dataclass(kw_only=True)
class Benchmarks(StageResult):
    files: list[FileBench]
    threads: int
    provider: str
    host: dict
    load: HostLoad
    session_options: dict
    noise_band: float

    def of(self, model: str, file: str) -> FileBench:
        return next(f for f in self.files if f.model == model and f.file == file)

    def ratio(self, a: FileBench, b: FileBench) -> Ratio:
        """``b``'s latency over ``a``'s, round by round."""
        return ratio(a.latency, b.latency)

    def warning(self) -> str | None:
        return self.load.warning(self.threads)


BENCH = Stage("bench", Benchmarks, __name__, ("onnxruntime", "torch", "pillow"))
E2E_IMAGES = 16
"""Test images (as their encoded bytes) the end-to-end latency cycles through."""


def benchmark(rt: Runtime, plan: BenchPlan,
              models: list[tuple[str, Done[TrainedModel], Done[Exported]]]) -> Done[Benchmarks]:
    """Accuracy on the test split and latency of every file of every ``(name, trained, export)``, measured
    together; PyTorch eager latency of each trained model for reference."""

    def run(work: Path) -> Benchmarks:
        files = [(name, trained, export, filename) for name, trained, export in models
                 for filename in export.result.files]
        paths = [(str(export.file(f)), export.result.preprocess.size) for _, _, export, f in files]
        log(f"  measuring latency of {len(paths)} files: {plan.rounds} interleaved rounds at batch 1, then batch "
            f"{plan.batch_size}, {plan.threads} threads")
        batch1 = measure(paths, plan.settings())
        batched = measure(paths, plan.reference_settings(plan.batch_size), memory=False)
        results = []
        encoded = [Path(s.path).read_bytes() for s in rt.data.test[:E2E_IMAGES]]
        with progress_bar(transient=True) as bar:
            task = bar.add_task("bench: test accuracy", total=len(files))
            for (name, trained, export, filename), lat, lat_batch in zip(files, batch1.latencies, batched.latencies):
                preprocess, path = export.result.preprocess, export.file(filename)
                quant = export.result.quantization
                quantized = quant is not None and filename == quant.file
                logits, labels = onnx_logits(path, preprocess, rt.eval_images("test", preprocess), plan.threads,
                                             reference=quantized and quant.reference)
                eager = None
                if filename == "model.onnx":
                    model, _ = load_trained(trained)
                    eager = eager_latency(model, preprocess.size, plan.reference_settings(1))
                precision = quant.label if quantized else "fp32"
                e2e = end_to_end(path, encoded, plan.reference_settings(1)) if encoded else None
                results.append(FileBench(model=name, file=filename, precision=precision, accuracy=top1(logits, labels),
                                         test_images=len(labels), latency=lat, latency_batch=lat_batch,
                                         size_mb=path.stat().st_size / 2**20, eager=eager, end_to_end=e2e))
                bar.advance(task)
        return Benchmarks(files=results, threads=plan.threads, provider=plan.provider, host=dict(plan.host),
                          load=batch1.load, session_options=batch1.session_options, noise_band=plan.noise_band)

    inputs: dict = {"data": rt.data.fingerprint}
    for name, trained, export in models:
        inputs |= {f"export:{name}": export, f"eager:{name}": trained}
    return rt.cache.run(BENCH, plan, inputs, run)
