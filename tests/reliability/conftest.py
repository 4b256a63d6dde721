"""Reliability fixtures: a keyed control plane and a primed trainer run to guard."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.control_plane.helpers import ControlPlaneProcess, start_control_plane
from tests.trainer.trainer_helpers import Trainer, datum

API_KEY = "reliability-key"
TOKENS = [21, 22, 23, 24, 25, 26, 27, 28]


@pytest.fixture(scope="session")
def keyed_control_plane(tmp_path_factory: pytest.TempPathFactory,
                        tiny_model_dir: Path) -> Iterator[ControlPlaneProcess]:
    """A control plane with an API key on its own data home (it starts no servers here)."""
    home = tmp_path_factory.mktemp("cp_keyed_home")
    cp = start_control_plane(home, api_key=API_KEY)
    yield cp
    cp.stop()


@pytest.fixture(scope="session")
def guarded_run(trainer_server) -> Trainer:
    """A run with trained weights, Adam moments and a non-empty gradient buffer.

    Fuzzed refusals aimed at it must leave all of that bit-identical.
    """
    trainer = Trainer(trainer_server.url, f"guard-{uuid.uuid4().hex[:10]}")
    trainer.init(rank=4, seed=5)
    trainer.forward_backward([datum(TOKENS)])
    trainer.optim_step(1e-2)
    trainer.forward_backward([datum(TOKENS[:6])])
    return trainer


def trainer_state(trainer: Trainer) -> tuple[dict, dict, dict, int]:
    """Gradient buffer, its metadata (step, counters), adapter weights, policy version."""
    grads, meta = trainer.tensors("gradients")
    adapter, _ = trainer.tensors("adapter")
    return grads, meta, adapter, trainer.policy_version()


def assert_same_state(before: tuple[dict, dict, dict, int],
                      after: tuple[dict, dict, dict, int]) -> None:
    import torch

    assert before[0].keys() == after[0].keys()
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0]), "gradient buffer"
    assert before[1] == after[1], "step / counters"
    assert all(torch.equal(before[2][k], after[2][k]) for k in before[2]), "weights"
    assert before[3] == after[3], "policy version"


# The runner's private data home (its daemon is stopped at the end of the session).
from tests.runner.conftest import runner_home  # noqa: E402, F401
