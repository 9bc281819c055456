"""Latency figures a budget can be gated on. Imports no torch.

Every figure is measured in ``rounds`` rounds, each ``warmup`` untimed runs then at least ``runs`` timed
runs and ``min_time_s`` seconds. Files measured together have their rounds interleaved in one process,
the order rotating each round, so that a slow minute of a shared machine falls on all of them alike.

A figure is the median over rounds of each round's p50, with a band: the distribution-free interval of that
median (order statistics over rounds, ``confidence``), widened to at least ``noise_band`` of it either side,
because a shared machine drifts between measurements minutes apart by more than rounds seconds apart show
(``benchmarks/latency_noise.py`` measures that drift). A limit is ``met`` when the whole band is at or below
it, ``not met`` when the whole band is above it, else ``inconclusive``. Ratios between files measured
together are taken round by round, where the drift cancels, so they carry only their own interval.

onnxruntime (OpenVINO for an IR file) runs in a fresh child process (``python -m factory.latency``) so that peak
memory is the models' own and not the caller's; PyTorch eager runs in-process for reference
(:func:`factory.evaluate.eager_latency`). The child also records the load average and, from ``/proc/stat``, how
much CPU other processes and the hypervisor (steal) took meanwhile.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from factory.host import usable_cores
from factory.runtime.session import IMAGE_INPUT, make_session

Verdict = Literal["met", "not met", "inconclusive"]

SESSION_OPTIONS = {"execution_mode": "sequential", "inter_op_threads": 1, "intra_op_spinning": "on",
                   "graph_optimization": "all"}
"""What every session measured here uses, stated in reports. Intra-op spinning off was not consistently
steadier on a 2-core shared host (absolute p50 spread over five measurements 1.25x vs 1.24x in one comparison,
1.11x vs 1.27x in another; INT8/FP32 ratio spread 1.05-1.14x either way) and 5-10% slower, so the onnxruntime
default stays (``LatencySettings.spinning`` and ``benchmarks/latency_noise.py --spinning off`` compare)."""


@dataclass(frozen=True)
class LatencySettings:
    """How to measure: rounds of warmup then timed runs, on ``threads`` intra-op threads."""

    rounds: int = 10
    warmup: int = 5
    runs: int = 30
    min_time_s: float = 0.3
    threads: int = 2
    provider: str = "CPUExecutionProvider"
    batch_size: int = 1
    noise_band: float = 0.25
    confidence: float = 0.95
    spinning: bool = True
    """onnxruntime intra-op spinning (see :data:`SESSION_OPTIONS`)."""


@dataclass(frozen=True)
class Band:
    """A median over rounds and the interval around it."""

    median: float
    low: float
    high: float


@dataclass(frozen=True)
class Memory:
    """Peak resident memory (MB) of a process that loads one model alone and runs it once, and what that run added
    to the peak (activations and arenas; the weights count from loading)."""

    peak_rss_mb: float
    model_mb: float


@dataclass(frozen=True)
class Latency:
    """One file's latency in milliseconds. ``p50`` is the median over rounds of each round's p50, inside
    ``[low, high]``; p90, p99, mean and std pool every timed run."""

    p50: float
    low: float
    high: float
    rounds_p50: list[float]
    p90: float
    p99: float
    mean: float
    std: float
    runs: int
    """Timed runs in all rounds together."""
    batch_size: int
    threads: int
    """onnxruntime's intra-op threads."""
    provider: str
    memory: Memory | None = None

    def verdict(self, limit_ms: float) -> Verdict:
        """``met`` when the band is at or below ``limit_ms``, ``not met`` when it is above, else inconclusive."""
        return verdict(Band(self.p50, self.low, self.high), limit_ms)

    def band_text(self) -> str:
        return f"{self.p50:.2f} ms ({self.low:.2f}-{self.high:.2f})"


@dataclass(frozen=True)
class Ratio:
    """``b / a`` latency, round by round, for two files measured in the same interleaved run."""

    median: float
    low: float
    high: float
    rounds: list[float]

    def text(self, a: str, b: str) -> str:
        """'b is 2.0x faster than a (1.9-2.1x over 10 rounds)' or the like."""
        if self.high < 1:
            return f"{b} is {1 / self.median:.2f}x faster than {a} ({1 / self.high:.2f}-{1 / self.low:.2f}x over " \
                   f"{len(self.rounds)} rounds)"
        if self.low > 1:
            return f"{b} is {self.median:.2f}x slower than {a} ({self.low:.2f}-{self.high:.2f}x over " \
                   f"{len(self.rounds)} rounds)"
        return f"{b} and {a} are within the noise ({b}/{a} {self.low:.2f}-{self.high:.2f} over {len(self.rounds)} rounds)"


@dataclass(frozen=True)
class HostLoad:
    """How busy the host was while measuring."""

    load_before: float
    load_after: float
    others_cpu: float | None
    """Share of all cores' time used by other processes during the measurement (None off Linux)."""
    steal: float | None
    """Share of all cores' time the hypervisor gave to other machines."""
    cores: int

    def warning(self, threads: int) -> str | None:
        """One line when the measurement shared the CPU, else None."""
        busy = []
        if self.others_cpu is not None and self.others_cpu > 0.10:
            busy.append(f"other processes used {self.others_cpu:.0%} of the CPU")
        if self.steal is not None and self.steal > 0.05:
            busy.append(f"the hypervisor took {self.steal:.0%} (steal)")
        if not busy:
            return None
        return (f"host busy while measuring latency ({', '.join(busy)}; load average {self.load_before:.2f} before, "
                f"{self.load_after:.2f} after, {threads} threads on {self.cores} cores): figures are noisier than usual")


@dataclass(frozen=True)
class Measurement:
    """Latencies of files measured together (same order as asked), and the host's load meanwhile."""

    latencies: list[Latency]
    load: HostLoad
    settings: LatencySettings

    @property
    def session_options(self) -> dict:
        return dict(SESSION_OPTIONS, intra_op_spinning="on" if self.settings.spinning else "off")


def order_statistic_interval(values: Sequence[float], confidence: float = 0.95) -> Band:
    """The median of ``values`` and a distribution-free ``confidence`` interval for it, ``[x(k), x(n+1-k)]``
    with the largest k whose coverage ``1 - 2 P(Binomial(n, 1/2) < k)`` reaches ``confidence`` (min and max
    when too few values reach it)."""
    x = sorted(values)
    n = len(x)
    if n == 0:
        raise ValueError("no values")
    k, below = 1, 0.0
    for j in range(1, n // 2 + 1):
        below += math.comb(n, j - 1) / 2**n  # P(B <= j - 1)
        if 1 - 2 * below >= confidence:
            k = j
        else:
            break
    return Band(float(np.median(x)), x[k - 1], x[n - k])


def latency_band(rounds_p50: Sequence[float], noise_band: float, confidence: float = 0.95) -> Band:
    """Median over rounds and its interval, widened to at least ``noise_band`` of the median either side."""
    b = order_statistic_interval(rounds_p50, confidence)
    return Band(b.median, min(b.low, b.median * (1 - noise_band)), max(b.high, b.median * (1 + noise_band)))


def verdict(band: Band, limit: float) -> Verdict:
    """A latency limit checked against a band: met, not met, or inconclusive when the band straddles it."""
    if band.high <= limit:
        return "met"
    if band.low > limit:
        return "not met"
    return "inconclusive"


def ratio(a: Latency, b: Latency, confidence: float = 0.95) -> Ratio:
    """``b / a`` round by round; both must come from one interleaved :func:`measure`."""
    if len(a.rounds_p50) != len(b.rounds_p50):
        raise ValueError("ratio of latencies from different measurements: measure the files together")
    per_round = [y / x for x, y in zip(a.rounds_p50, b.rounds_p50)]
    band = order_statistic_interval(per_round, confidence)
    return Ratio(band.median, band.low, band.high, per_round)


def interleaved(fns: Sequence[Callable[[], object]], s: LatencySettings) -> list[list[list[float]]]:
    """Per function, per round, the timed runs in ms; the order of functions rotates every round."""
    times: list[list[list[float]]] = [[] for _ in fns]
    for r in range(s.rounds):
        for i in [(r + j) % len(fns) for j in range(len(fns))]:
            fn = fns[i]
            for _ in range(s.warmup):
                fn()
            ms = []
            start = time.perf_counter()
            while len(ms) < s.runs or time.perf_counter() - start < s.min_time_s:
                t = time.perf_counter()
                fn()
                ms.append((time.perf_counter() - t) * 1000)
            times[i].append(ms)
    return times


def latency_of(rounds: list[list[float]], s: LatencySettings, provider: str) -> Latency:
    """The :class:`Latency` of timed runs in ms, per round."""
    pooled = np.concatenate(rounds)
    per_round = [float(np.percentile(r, 50)) for r in rounds]
    band = latency_band(per_round, s.noise_band, s.confidence)
    return Latency(p50=band.median, low=band.low, high=band.high, rounds_p50=per_round,
                   p90=float(np.percentile(pooled, 90)), p99=float(np.percentile(pooled, 99)),
                   mean=float(pooled.mean()), std=float(pooled.std()), runs=len(pooled), batch_size=s.batch_size,
                   threads=s.threads, provider=provider)


def end_to_end(path: str | Path, images: Sequence[bytes], settings: LatencySettings) -> Latency:
    """What a user waits for, per image: decode the encoded ``images`` (JPEG or PNG bytes, cycled), Pillow's
    preprocessing as the build evaluated (:class:`factory.runtime.ExportedModel`) and the model, at batch 1 with
    ``settings``' threads and rounds; beside :func:`measure`'s model-only figure."""
    import io

    from PIL import Image

    from factory.runtime.model import ExportedModel

    model = ExportedModel.open(path, settings.threads, provider=settings.provider)
    position = iter(range(10**12))

    def one() -> None:
        with Image.open(io.BytesIO(images[next(position) % len(images)])) as image:
            model.logits(model.preprocess(image)[None])

    rounds = interleaved([one], replace(settings, batch_size=1))[0]
    return latency_of(rounds, replace(settings, batch_size=1), settings.provider)


def _run_child(spec: dict, what: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "factory.latency", json.dumps(spec)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"latency measurement of {what} failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(files: Sequence[tuple[str, int]], settings: LatencySettings, memory: bool = True) -> Measurement:
    """Latency of ONNX classifiers, each ``(path, input size)``, measured together in a child process with
    interleaved rounds; with ``memory``, each file's peak memory in a child process of its own."""
    spec = {"files": [[str(p), int(size)] for p, size in files], "settings": asdict(settings)}
    out = _run_child(spec, ", ".join(str(p) for p, _ in files))
    latencies = [Latency(**lat) for lat in out["latencies"]]
    if memory:
        alone = [_run_child(spec | {"files": [file], "memory_only": True}, str(file[0])) for file in spec["files"]]
        latencies = [replace(lat, memory=Memory(**m)) for lat, m in zip(latencies, alone)]
    return Measurement(latencies, HostLoad(**out["load"]), settings)


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


def _cpu_times() -> tuple[float, float, float] | None:
    """(all cores' busy seconds, steal seconds, total seconds) from /proc/stat, None where there is none."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = fields + [0] * (8 - len(fields))
    hz = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / hz, steal / hz, sum(fields) / hz


def _runner(path: str, x: np.ndarray, settings: LatencySettings) -> tuple[Callable[[], object], str]:
    """One inference of ``path`` on ``x`` and the runtime that runs it: onnxruntime for an ONNX or ``.ort`` file,
    OpenVINO's CPU plugin for an OpenVINO IR (``.xml``, :mod:`factory.runtime.openvino`); an image-input file
    (:mod:`factory.image_graph`) gets a decoded VGA frame."""
    if path.endswith(".xml"):
        from factory.runtime.openvino import OpenVinoSession

        session = OpenVinoSession(path, settings.threads)
    else:
        session = make_session(path, settings.threads, settings.provider, settings.spinning)
    feed = {"input": x}
    if session.get_inputs()[0].name == IMAGE_INPUT:
        feed = {IMAGE_INPUT: np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)}
    return (lambda: session.run(None, feed)), session.get_providers()[0]


def _child(spec: dict) -> dict:
    settings = LatencySettings(**spec["settings"])
    rng = np.random.default_rng(0)
    runners, runtimes = [], []
    for path, size in spec["files"]:
        x = rng.standard_normal((settings.batch_size, 3, size, size), dtype=np.float32)
        runner, runtime = _runner(path, x, settings)
        runners.append(runner)
        runtimes.append(runtime)
    if spec.get("memory_only"):
        before_kb = _peak_rss_kb()
        runners[0]()
        return {"peak_rss_mb": _peak_rss_kb() / 1024, "model_mb": (_peak_rss_kb() - before_kb) / 1024}

    load_before, cpu_before, own_before = os.getloadavg()[0], _cpu_times(), sum(os.times()[:2])
    times = interleaved(runners, settings)
    load_after, cpu_after, own_after = os.getloadavg()[0], _cpu_times(), sum(os.times()[:2])
    others = steal = None
    if cpu_before and cpu_after and cpu_after[2] > cpu_before[2]:
        total = cpu_after[2] - cpu_before[2]
        others = max(0.0, (cpu_after[0] - cpu_before[0]) - (own_after - own_before)) / total
        steal = (cpu_after[1] - cpu_before[1]) / total
    load = HostLoad(load_before, load_after, others, steal, usable_cores())
    latencies = [latency_of(t, settings, runtime) for t, runtime in zip(times, runtimes)]
    return {"latencies": [asdict(lat) for lat in latencies], "load": asdict(load)}


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
