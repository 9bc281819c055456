"""Device profiles: where a model will run, and how the factory measures and quantizes for it.

A recipe's ``budget.profile`` names one of these. Latency is always *measured* on the machine
that runs the factory with the profile's execution provider and thread count; when that machine
is not the profile's kind (say an x86 build host for an arm64 phone profile), the report says so.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Literal

Precision = Literal["static_int8", "dynamic_int8", "fp16", "fp32"]


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    execution_provider: str
    threads: int
    precision: Precision
    """Quantization preset tried first; the factory still ships whatever measures fastest within
    the accuracy limit."""
    machine: tuple[str, ...]
    """``platform.machine()`` values that count as this device."""

    def matches_host(self) -> bool:
        if self.execution_provider == "CUDAExecutionProvider":
            import onnxruntime as ort

            return "CUDAExecutionProvider" in ort.get_available_providers()
        return platform.machine().lower() in self.machine


PROFILES: dict[str, DeviceProfile] = {
    p.name: p
    for p in [
        DeviceProfile(
            name="x86-cpu",
            description="x86-64 CPU (AVX2 / AVX-512 VNNI), onnxruntime CPU execution provider",
            execution_provider="CPUExecutionProvider",
            threads=2,
            precision="static_int8",
            machine=("x86_64", "amd64"),
        ),
        DeviceProfile(
            name="arm64-phone",
            description="phone-class arm64 CPU (4 big cores), onnxruntime CPU execution provider",
            execution_provider="CPUExecutionProvider",
            threads=4,
            precision="static_int8",
            machine=("aarch64", "arm64"),
        ),
        DeviceProfile(
            name="cuda-gpu",
            description="NVIDIA GPU, onnxruntime CUDA execution provider",
            execution_provider="CUDAExecutionProvider",
            threads=1,
            precision="fp16",
            machine=("x86_64", "aarch64"),
        ),
    ]
}


def get_profile(name: str) -> DeviceProfile:
    """Return the profile called ``name``; KeyError lists the known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown device profile {name!r}; known profiles: {', '.join(PROFILES)}") from None
