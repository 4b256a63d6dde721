"""The CPU class a build records: what decides whether two builds can share bytes."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

from loops_runner.models.machine import (
    FLOAT_ISA_FLAGS,
    ISA_OVERRIDES,
    MachineClass,
    current_machine,
    recorded_machine,
)

EPYC = MachineClass(architecture="x86_64", vendor="AuthenticAMD", model_name="AMD EPYC",
                    torch_cpu_capability="AVX2", isa_flags=("avx", "avx2", "f16c", "fma"))


def _machine_in_child(inherit_overrides: bool = False, **env: str) -> MachineClass:
    """current_machine() in a fresh process (torch reads its ISA settings at start)."""
    code = ("import json\nfrom loops_runner.models.machine import current_machine\n"
            "print(json.dumps(current_machine().to_json()))")
    base = {k: v for k, v in os.environ.items()
            if inherit_overrides or k not in ISA_OVERRIDES}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**base, **env}, timeout=120).stdout
    return MachineClass.from_json(json.loads(out.splitlines()[-1]))


def test_this_machine_is_recorded_as_the_kernels_see_it() -> None:
    here = current_machine()
    import torch

    assert here.torch_cpu_capability == torch.backends.cpu.get_cpu_capability()
    assert set(here.isa_flags) <= set(FLOAT_ISA_FLAGS) and list(here.isa_flags) == \
        sorted(here.isa_flags)
    assert MachineClass.from_json(json.loads(json.dumps(here.to_json()))) == here
    assert here.same_class(_machine_in_child(inherit_overrides=True))


def test_capping_the_isa_makes_another_class() -> None:
    """ATEN_CPU_CAPABILITY=default runs other kernels (other bytes): another class, named."""
    capped = _machine_in_child(ATEN_CPU_CAPABILITY="default")
    assert capped.torch_cpu_capability == "DEFAULT"
    assert capped.isa_overrides == {"ATEN_CPU_CAPABILITY": "default"}
    assert not capped.same_class(_machine_in_child())
    assert "ATEN_CPU_CAPABILITY=default" in capped.describe()


def test_class_is_vendor_capability_flags_not_the_model_name() -> None:
    assert EPYC.same_class(dataclasses.replace(EPYC, model_name="AMD EPYC 7B13"))
    for other in (dataclasses.replace(EPYC, vendor="GenuineIntel"),
                  dataclasses.replace(EPYC, torch_cpu_capability="AVX512"),
                  dataclasses.replace(EPYC, isa_flags=(*EPYC.isa_flags, "avx512f")),
                  dataclasses.replace(EPYC, architecture="aarch64"),
                  dataclasses.replace(EPYC, isa_overrides={"ONEDNN_MAX_CPU_ISA": "AVX2"})):
        assert not EPYC.same_class(other), other
    assert EPYC.describe() == 'AuthenticAMD "AMD EPYC" x86_64, torch AVX2, avx avx2 f16c fma'


def test_a_build_info_without_a_machine_has_no_class() -> None:
    assert recorded_machine({"name": "tiny"}) is None
    assert recorded_machine({"machine": EPYC.to_json()}) == EPYC
