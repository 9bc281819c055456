"""Device profiles: where a model will run, and how the factory measures and quantizes for it.

A recipe's ``budget.profile`` names one of :data:`PROFILES` or spells one out (the same fields). Latency is
measured on the machine that runs the factory with the profile's execution provider and threads; that
machine *stands in* for the profile only when it is the same kind (architecture, the ISA the profile assumes,
enough cores, the provider). Otherwise its figures are proxies, unless figures measured on the device itself
(``factory bench --json`` there) are given as ``budget.measured`` or ``factory students --measured``.
Imports no torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass

CHANGES_NO_RESULT = True

Precision = Literal["static_int8", "dynamic_int8", "fp16", "fp32"]


@dataclass(frozen=True, kw_only=True, config=ConfigDict(extra="forbid"))
class DeviceProfile:
    """A device a recipe targets: one of :data:`PROFILES`, or spelled out in a recipe's ``budget.profile`` with
    these very fields (validated: an unknown key or a wrong value is an error naming it)."""

    name: str
    description: str = ""
    execution_provider: str = "CPUExecutionProvider"
    threads: int = Field(ge=1, le=256)
    precision: Precision = "static_int8"
    """Quantization preset tried first; the factory still ships FP32 when that measures faster beyond the
    noise or the preset breaks the accuracy limit."""
    machine: tuple[str, ...] = Field(description="platform.machine() values of the device, e.g. [aarch64]")
    """``platform.machine()`` values of this device."""
    isa: tuple[str, ...] = ()
    """CPU flags (as /proc/cpuinfo names them) the device has; a host without one cannot stand in."""
    lacks_isa: tuple[str, ...] = ()
    """Flags the device lacks; a host with one runs the preset faster than the device would."""
    reduce_range: bool = False
    """Static INT8 with 7-bit weights (onnxruntime's ``reduce_range``). onnxruntime's x86 kernels without VNNI
    multiply UINT8 activations by INT8 weights with VPMADDUBSW, which adds pairs of products in 16 bits with
    saturation: full-range weights can overflow it (255 * 127 * 2 > 32767), 7-bit ones cannot
    (255 * 64 * 2 < 32767), so the file computes there what its QDQ definition says, as onnxruntime's
    quantization guide recommends for such machines."""

    @property
    def int8_exact(self) -> bool:
        """Whether the device's INT8 kernels compute what a static INT8 QDQ file defines: arm64 and x86 with VNNI
        do; x86 without VNNI only with 7-bit weights (:attr:`reduce_range`)."""
        vnni = {"avx512_vnni", "avx_vnni"} & set(self.isa)
        return self.reduce_range or bool(vnni) or not {"x86_64", "amd64"} & set(self.machine)

    def stand_in(self, host: dict | None = None) -> tuple[bool, str]:
        """Whether this host can stand in for the device, and why not."""
        from factory.host import host_info

        host = host or host_info()
        if self.execution_provider not in host["providers"]:
            return False, f"this onnxruntime has no {self.execution_provider}"
        if host["machine"].lower() not in self.machine:
            return False, f"this host is {host['machine']}, the profile is {'/'.join(self.machine)}"
        flags = set(host["isa_flags"])
        if missing := [f for f in self.isa if f not in flags]:
            return False, f"this host's CPU lacks {', '.join(missing)}"
        if extra := [f for f in self.lacks_isa if f in flags]:
            return False, f"this host's CPU has {', '.join(extra)}, which the profile's device lacks"
        if self.execution_provider == "CPUExecutionProvider" and (host["cores"] or 1) < self.threads:
            return False, f"this host has {host['cores']} cores, the profile uses {self.threads} threads"
        return True, "this host is the profile's kind of device"


PROFILES: dict[str, DeviceProfile] = {
    p.name: p
    for p in [
        DeviceProfile(
            name="x86-avx2",
            description="x86-64 server core with AVX2 and no VNNI (e.g. AMD Zen 3), 2 threads, onnxruntime CPU",
            execution_provider="CPUExecutionProvider", threads=2, precision="static_int8",
            machine=("x86_64", "amd64"), isa=("avx2", "fma"), lacks_isa=("avx512_vnni", "avx_vnni"),
            reduce_range=True,
        ),
        DeviceProfile(
            name="x86-avx512-vnni",
            description="x86-64 server core with AVX-512 VNNI (e.g. Intel Ice Lake and later), 2 threads, "
                        "onnxruntime CPU",
            execution_provider="CPUExecutionProvider", threads=2, precision="static_int8",
            machine=("x86_64", "amd64"), isa=("avx2", "avx512f", "avx512_vnni"),
        ),
        DeviceProfile(
            name="arm64-board",
            description="4-thread arm64 board (Cortex-A76 class, e.g. Raspberry Pi 5), onnxruntime CPU",
            execution_provider="CPUExecutionProvider", threads=4, precision="static_int8",
            machine=("aarch64", "arm64"), isa=("asimd", "asimddp"),
        ),
        DeviceProfile(
            name="arm64-phone",
            description="one phone-class arm64 core (a single thread of a Cortex-A7x big core), onnxruntime CPU",
            execution_provider="CPUExecutionProvider", threads=1, precision="static_int8",
            machine=("aarch64", "arm64"), isa=("asimd", "asimddp"),
        ),
        DeviceProfile(
            name="cuda-gpu",
            description="NVIDIA GPU, onnxruntime CUDA execution provider",
            execution_provider="CUDAExecutionProvider", threads=1, precision="fp16",
            machine=("x86_64", "aarch64"),
        ),
    ]
}


def get_profile(spec: str | DeviceProfile) -> DeviceProfile:
    """The profile a recipe names (a key of :data:`PROFILES`) or spells out; KeyError lists the known ones."""
    if isinstance(spec, DeviceProfile):
        return spec
    try:
        return PROFILES[spec]
    except KeyError:
        raise KeyError(f"unknown device profile {spec!r}; known profiles: {', '.join(PROFILES)}") from None
