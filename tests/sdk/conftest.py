"""Fixtures of the client tests: the control plane, fault proxies, clients.

The trainer and sampler fixtures come from tests/conftest.py (one real server
each per session). The control plane provisions its own trainer and sampler
processes on first use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from loops_runner.sdk import ServiceClient
from tests.sdk.proxy import FaultProxy


@pytest.fixture(scope="session")
def control_plane_server(loops_home: Path, tiny_model_dir: Path):  # -> ServerProcess
    """A real control plane (``loops-runner serve control-plane``) for the session."""
    from tests.servers import start_server

    server = start_server(["control-plane", "--port", "0"], loops_home, "control-plane-sdk.log",
                          health_path="/v1/loops/capabilities")
    yield server
    server.stop(timeout=30.0)


@pytest.fixture(scope="session")
def service(control_plane_server) -> ServiceClient:
    """A session on the control plane, shared by the tests that only read through it."""
    return ServiceClient(base_url=control_plane_server.url)


@pytest.fixture(scope="session")
def reusing_service(control_plane_server, service) -> ServiceClient:
    """A second session whose runs and samplers attach to ``service``'s warm processes.

    Provisioning a fresh trainer or sampler costs a process start; reuse keeps
    the suite to one trainer, one paired sampler and one standalone sampler.
    """
    return ServiceClient(base_url=control_plane_server.url,
                         reuse_from_session_id=service.session_id)


@pytest.fixture(scope="session")
def local_service(trainer_server, sampler_server) -> ServiceClient:
    return ServiceClient.local(trainer_url=trainer_server.url, sampler_url=sampler_server.url)


@pytest.fixture
def proxy() -> Iterator[Callable[[str], FaultProxy]]:
    """Make fault proxies in front of real servers; closed after the test."""
    made: list[FaultProxy] = []

    def make(target: str) -> FaultProxy:
        made.append(FaultProxy(target))
        return made[-1]

    yield make
    for instance in made:
        instance.close()
