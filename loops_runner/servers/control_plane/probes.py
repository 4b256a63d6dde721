"""What the supervisor asks a running server over HTTP: its health and its idle time.

Probes carry the supervisor header, so a server does not count them as use
(``GET /internal/activity`` would otherwise never report it idle).
"""

from __future__ import annotations

import logging
from urllib.parse import urlencode

import httpx

from loops_runner.servers.activity import ACTIVITY_PATH, SUPERVISOR_HEADER
from loops_runner.servers.common import GATEWAY_SOURCE_HEADER
from loops_runner.servers.control_plane.deployment_states import TRAINER
from loops_runner.servers.control_plane.tables import DeploymentRow
from loops_runner.wire.headers import GATEWAY_ERROR_SOURCE

logger = logging.getLogger(__name__)

# A health answer meaning "this server does not serve that model": final.
WRONG_MODEL = -404


class Probes:
    def __init__(self) -> None:
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(5.0),
                                       headers={SUPERVISOR_HEADER: "1"})
        self._no_activity_route: set[str] = set()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def health_status(self, row: DeploymentRow, url: str) -> int | None:
        """The health route's status; None when unreachable, ``WRONG_MODEL`` when refused."""
        path = "/health"
        if row.kind == TRAINER:
            path += "?" + urlencode({"base_model": row.launch_model})
        try:
            response = await self._http.get(url + path)
        except httpx.HTTPError:
            return None
        source = response.headers.get(GATEWAY_SOURCE_HEADER)
        if response.status_code == 404 and source == GATEWAY_ERROR_SOURCE:
            return WRONG_MODEL  # the server says it does not serve this model: final
        return response.status_code

    async def idle_seconds(self, deployment_id: str, url: str) -> float | None:
        """Seconds since the server last saw a request; None when it cannot tell."""
        try:
            response = await self._http.get(url + ACTIVITY_PATH)
            if response.status_code == 200:
                return float(response.json()["idle_seconds"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return None
        if deployment_id not in self._no_activity_route:
            self._no_activity_route.add(deployment_id)
            logger.warning("deployment %s does not serve %s (HTTP %s): it is never stopped "
                           "for idleness", deployment_id, ACTIVITY_PATH, response.status_code)
        return None
