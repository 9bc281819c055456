"""The machine a latency figure belongs to: CPU model, ISA flags, cores, OS and onnxruntime.

Part of every benchmark's cache key, so that a shared cache (a Docker volume, a team cache) never
reports another machine's latency as this one's. Imports no torch.
"""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path
from functools import cache

CHANGES_NO_RESULT = True

# the flags that change what onnxruntime's CPU kernels can do
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
             "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "sve", "i8mm", "bf16")


def _cpuinfo() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in open("/proc/cpuinfo"):
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name in ("model name", "hardware", "cpu model") and value.strip():
                model = value.strip()
            elif name in ("flags", "features"):
                flags |= set(value.split())
    except OSError:
        pass
    return model, sorted(f for f in ISA_FLAGS if f in flags)


def usable_cores(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPUs this process may use: its affinity (``os.sched_getaffinity``), capped by a cgroup v2 CPU quota
    (``cpu.max``, e.g. a container limited to 2 CPUs on a 64-core host); ``os.cpu_count()`` counts the host's."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = (cgroup_root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return cores
    if quota == "max":
        return cores
    return max(1, min(cores, math.ceil(int(quota) / int(period))))


@cache
def host_info() -> dict:
    """CPU model, ISA flags, core count, OS, Python and onnxruntime (version and providers) of this host."""
    import onnxruntime as ort

    model, flags = _cpuinfo()
    return {"machine": platform.machine(), "cpu": model, "isa_flags": flags, "cores": usable_cores(),
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "onnxruntime": ort.__version__, "providers": list(ort.get_available_providers())}
