"""The machine a latency figure belongs to: CPU model, ISA flags, cores, OS and onnxruntime.

Part of every benchmark's cache key, so that a shared cache (a Docker volume, a team cache) never
reports another machine's latency as this one's. Imports no torch.
"""

from __future__ import annotations

import os
import platform
from functools import cache

CHANGES_NO_RESULT = True  # no stage result depends on this module (factory.identity)

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


@cache
def host_info() -> dict:
    """CPU model, ISA flags, core count, OS, Python and onnxruntime (version and providers) of this host."""
    import onnxruntime as ort

    model, flags = _cpuinfo()
    return {"machine": platform.machine(), "cpu": model, "isa_flags": flags, "cores": os.cpu_count(),
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "onnxruntime": ort.__version__, "providers": list(ort.get_available_providers())}
