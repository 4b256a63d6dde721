"""The class of CPU a build ran on: what decides its float bytes besides code and libraries.

Float sums are not associative, and torch's CPU kernels (ATen's vectorised
loops, MKL's and oneDNN's matrix products) pick their instruction set, vector
width and fused multiply-add use from the CPU they run on. So the same code
under the same library versions writes other weights on another CPU, and
2,000 steps of pretraining grow that rounding noise into another model (an
Intel AVX-512 rebuild of ``tiny`` ended 0.2% away in loss but ten points away
in held-out accuracy). Bytes are therefore comparable only within one machine
class: the CPU vendor, torch's dispatch capability, the float-relevant ISA
flags and any environment variable that caps the ISA. The model name is
recorded for people; it is not part of the class (virtual machines often show
a generic one, and the kernels dispatch on the flags, not the name).

Reading a recorded class needs no torch (the CLI prints it); only
:func:`current_machine` imports torch, to ask which kernels it dispatches to.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# CPU flags (as /proc/cpuinfo spells them) that select other float kernels in
# torch, MKL or oneDNN: vector width, fused multiply-add, half/bfloat16 and
# matrix units. Flags outside this list (crypto, string ops) change no float.
FLOAT_ISA_FLAGS = (
    # x86
    "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512dq", "avx512bw",
    "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
    "amx_int8", "amx_fp16",
    # arm64
    "asimd", "asimdhp", "asimddp", "fphp", "sve", "sve2", "bf16", "i8mm", "sme",
)
# Environment variables that cap or fix the kernels' instruction set.
ISA_OVERRIDES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA",
                 "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "MKL_DEBUG_CPU_TYPE")
_CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class MachineClass:
    """One CPU class, as recorded in a build info's ``machine`` field."""

    architecture: str  # platform.machine(): x86_64, aarch64, arm64
    vendor: str  # AuthenticAMD, GenuineIntel, ... ("" where the OS does not say)
    model_name: str  # for people only: not part of the class
    torch_cpu_capability: str  # torch.backends.cpu.get_cpu_capability(): DEFAULT, AVX2, AVX512...
    isa_flags: tuple[str, ...]  # the FLOAT_ISA_FLAGS this CPU has, sorted
    isa_overrides: dict[str, str] = field(default_factory=dict)  # ISA_OVERRIDES that were set

    def same_class(self, other: MachineClass) -> bool:
        """Whether a build here should give the bytes a build on ``other`` gave."""
        return self._key() == other._key()

    def _key(self) -> tuple[Any, ...]:
        return (self.architecture, self.vendor, self.torch_cpu_capability, self.isa_flags,
                tuple(sorted(self.isa_overrides.items())))

    def describe(self) -> str:
        """One line for messages: ``AuthenticAMD "AMD EPYC" x86_64, torch AVX2, avx avx2 ...``."""
        overrides = "".join(f", {k}={v}" for k, v in sorted(self.isa_overrides.items()))
        return (f"{self.vendor or 'unknown vendor'} \"{self.model_name or 'unknown model'}\" "
                f"{self.architecture}, torch {self.torch_cpu_capability}, "
                f"{' '.join(self.isa_flags) or 'no float ISA flags'}{overrides}")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["isa_flags"] = list(self.isa_flags)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MachineClass:
        return cls(architecture=data["architecture"], vendor=data["vendor"],
                   model_name=data["model_name"],
                   torch_cpu_capability=data["torch_cpu_capability"],
                   isa_flags=tuple(data["isa_flags"]),
                   isa_overrides=dict(data.get("isa_overrides", {})))


def _cpuinfo_fields() -> dict[str, str]:
    """The first processor's ``key: value`` lines of /proc/cpuinfo (empty off Linux)."""
    try:
        text = _CPUINFO.read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:  # the first processor's block has ended
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def current_machine() -> MachineClass:
    """This machine's class, as a build here would record it (imports torch)."""
    import torch

    fields = _cpuinfo_fields()
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    return MachineClass(
        architecture=platform.machine(),
        vendor=fields.get("vendor_id") or fields.get("CPU implementer") or "",
        model_name=fields.get("model name") or platform.processor(),
        torch_cpu_capability=torch.backends.cpu.get_cpu_capability(),
        isa_flags=tuple(sorted(flags.intersection(FLOAT_ISA_FLAGS))),
        isa_overrides={name: os.environ[name] for name in ISA_OVERRIDES if name in os.environ},
    )


def recorded_machine(info: dict[str, Any]) -> MachineClass | None:
    """The class a build info records (``None`` for a build made before it was recorded)."""
    data = info.get("machine")
    return MachineClass.from_json(data) if data else None
