"""Idle runs' state on disk: how a long-lived trainer keeps its memory bounded.

A trainer serves many runs over its life (sweeps, sessions that come back).
Each resident run holds its LoRA weights and Adam moments in memory; past
``max_resident_runs`` the least recently used runs without pending gradients
are written to ``<home>/runs/<run>/.resident/state.safetensors`` and dropped
from memory. The next operation on such a run loads it back, bit-identical
(weights, moments, step), so a client never notices the round trip.

The folder is internal (a dot folder, no ``checkpoint.json``): it is never
listed as a checkpoint and is replaced on every eviction of that run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from loops_runner.storage import atomic, layout

MAX_RESIDENT_ENV = "LOOPS_TRAINER_MAX_RESIDENT_RUNS"
DEFAULT_MAX_RESIDENT_RUNS = 32
STATE_FILE = "state.safetensors"


def max_resident_runs() -> int:
    value = int(os.environ.get(MAX_RESIDENT_ENV, DEFAULT_MAX_RESIDENT_RUNS))
    if value < 1:
        raise ValueError(f"{MAX_RESIDENT_ENV} must be >= 1, got {value}")
    return value


def resident_dir(home: Path, run_id: str) -> Path:
    return layout.run_dir(home, run_id) / ".resident"


@dataclass
class EvictedRun:
    """What a run needs to come back: its shape, and its tensors on disk."""

    rank: int
    seed: int
    step: int
    adam_step: int


def save_evicted(home: Path, run_id: str, meta: EvictedRun, params: dict[str, torch.Tensor],
                 exp_avg: dict[str, torch.Tensor], exp_avg_sq: dict[str, torch.Tensor]) -> None:
    """Write the run's tensors atomically (a failed write leaves the run resident)."""
    tensors = {f"param/{k}": v.detach().to("cpu").contiguous() for k, v in params.items()}
    tensors |= {f"exp_avg/{k}": v.detach().to("cpu").contiguous() for k, v in exp_avg.items()}
    tensors |= {f"exp_avg_sq/{k}": v.detach().to("cpu").contiguous()
                for k, v in exp_avg_sq.items()}
    with atomic.atomic_directory(resident_dir(home, run_id)) as staging:
        save_file(tensors, staging / STATE_FILE,
                  metadata={"run": json.dumps(meta.__dict__)})


def load_evicted(home: Path, run_id: str) -> tuple[EvictedRun, dict[str, dict[str, torch.Tensor]]]:
    """The run's metadata and its tensors by slot (``param``, ``exp_avg``, ``exp_avg_sq``)."""
    from safetensors import safe_open

    path = resident_dir(home, run_id) / STATE_FILE
    with safe_open(str(path), framework="pt") as handle:
        meta = EvictedRun(**json.loads(handle.metadata()["run"]))
    slots: dict[str, dict[str, torch.Tensor]] = {"param": {}, "exp_avg": {}, "exp_avg_sq": {}}
    for key, value in load_file(path).items():
        slot, _, name = key.partition("/")
        slots[slot][name] = value
    return meta, slots
