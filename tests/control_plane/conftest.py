"""Fixtures the control-plane test modules share."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.control_plane.helpers import ControlPlaneProcess


@pytest.fixture(scope="module")
def api(cp: ControlPlaneProcess) -> Iterator[httpx.Client]:
    """A client of the requesting module's own ``cp`` fixture (each starts its control plane)."""
    with cp.client(timeout=300.0) as client:
        yield client
