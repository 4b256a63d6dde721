"""Clients of the session's real trainer and sampler, for the RL tests."""

from __future__ import annotations

from typing import Any

import pytest

from loops_runner.sdk import ServiceClient


@pytest.fixture(scope="module")
def service(trainer_server, sampler_server) -> ServiceClient:
    return ServiceClient.local(trainer_url=trainer_server.url, sampler_url=sampler_server.url)


@pytest.fixture(scope="module")
def policy(service: ServiceClient, tiny_model_dir) -> Any:
    """The base model's sampler (a fresh adapter on the trainer computes the same model)."""
    # Without a control plane nothing resolves local names: name the model by its directory.
    return service.create_sampling_client(str(tiny_model_dir))
