"""Where trainers and samplers live, and waiting until they are ready.

The capacity kind is read from the control plane's answers, never from URL
shapes (spec 1.1): a run with a ``deployment_id`` is a dedicated trainer; a
sampler with a ``model_id`` is a dedicated sampler (synchronous ``/sample``,
version floors), one without is a serverless, queued sampler. Endpoints given
by hand (``ServiceClient.local``) are ``local``: no control plane behind them.

The spec polls readiness every 10 s; the client starts at 0.5 s and backs off
to 10 s, which the wire cannot tell apart but makes local starts quick.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlencode

import httpx

from loops_runner.sdk.control_plane import ControlPlaneClient
from loops_runner.sdk.errors import (
    LoopsError,
    OperationTimeoutError,
    RequestRejectedError,
    SamplerTerminatedError,
    TrainerTerminatedError,
)
from loops_runner.sdk.http import (
    RUN_ID_HEADER,
    base_headers,
    is_gateway_rejection,
    make_client,
    raise_for_status,
    rejection,
)
from loops_runner.wire import RunInfo, SamplerInfo

logger = logging.getLogger("loops_runner.sdk")

Kind = Literal["local", "dedicated", "serverless"]
TRAINER_TERMINAL_STATES = frozenset({"FAILED", "STOPPED", "PREEMPTED"})
SAMPLER_READY_STATE = "ACTIVE"
SAMPLER_SCALED_TO_ZERO = "SCALED_TO_ZERO"
SAMPLER_TERMINAL_STATES = frozenset({"DEPLOY_FAILED", "UNHEALTHY", "BUILD_FAILED",
                                     "BUILD_STOPPED", "DEACTIVATING", "INACTIVE", "FAILED"})
FIRST_INTERVAL = 0.5
MAX_INTERVAL = 10.0
PROBE_TIMEOUT = 10.0


@dataclass(frozen=True)
class TrainerEndpoint:
    base_url: str
    kind: Kind = "local"
    deployment_id: str | None = None

    @classmethod
    def from_run(cls, run: RunInfo) -> TrainerEndpoint:
        assert run.base_url is not None
        kind: Kind = "dedicated" if run.deployment_id is not None else "serverless"
        return cls(run.base_url.rstrip("/"), kind, run.deployment_id)


@dataclass(frozen=True)
class SamplerEndpoint:
    base_url: str
    kind: Kind = "local"
    sampler_id: str | None = None
    model_id: str | None = None
    deployment_id: str | None = None
    base_checkpoint: str | None = None
    # The control plane's own name of the model it serves (a local name is
    # answered with its directory): what the tokenizer loads from.
    served_model: str | None = None

    @classmethod
    def from_info(cls, info: SamplerInfo) -> SamplerEndpoint:
        assert info.base_url is not None
        if info.model_id is None:
            return cls(info.base_url.rstrip("/"), "serverless", info.id,
                       base_checkpoint=info.base_checkpoint, served_model=info.base_model)
        if info.deployment_id is None:
            raise LoopsError(f"sampler {info.id} has a model_id but no deployment_id",
                             operation="create_sampler")
        return cls(info.base_url.rstrip("/"), "dedicated", info.id, info.model_id,
                   info.deployment_id, info.base_checkpoint, info.base_model)

    @property
    def queued(self) -> bool:
        return self.kind == "serverless"


class BasetenDeployment(SamplerEndpoint):
    """The Baseten SDK's name of a dedicated sampler (a model deployment)."""

    def __init__(self, base_url: str, model_id: str, deployment_id: str,
                 api_base_url: str | None = None) -> None:
        super().__init__(base_url.rstrip("/"), "dedicated", None, model_id, deployment_id)
        # Kept for scripts that read it; the clients take the control plane separately.
        object.__setattr__(self, "api_base_url", api_base_url)


class LocalDeployment(SamplerEndpoint):
    """The Baseten SDK's name of a sampler with no control plane behind it."""

    def __init__(self, base_url: str) -> None:
        super().__init__(base_url.rstrip("/"), "local")


class ServerlessDeployment(SamplerEndpoint):
    """The Baseten SDK's name of a sampler on shared, queued capacity."""

    def __init__(self, base_url: str) -> None:
        super().__init__(base_url.rstrip("/"), "serverless")


# The Baseten SDK's union of the three; here they share one class.
DeploymentConfig = SamplerEndpoint


def health_url(base_url: str, base_model: str) -> str:
    return f"{base_url.rstrip('/')}/health?{urlencode({'base_model': base_model})}"


class _Backoff:
    def __init__(self, budget: float | None) -> None:
        self.deadline = None if budget is None else time.monotonic() + budget
        self.interval = FIRST_INTERVAL

    def remaining(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()

    def sleep(self) -> bool:
        """Pause before the next probe; False when the budget is spent."""
        remaining = self.remaining()
        if remaining <= 0:
            return False
        time.sleep(min(self.interval, remaining))
        self.interval = min(self.interval * 2, MAX_INTERVAL)
        return True


def wait_for_trainer(control_plane: ControlPlaneClient, endpoint: TrainerEndpoint, *,
                     base_model: str, run_id: str, ready_timeout: float | None) -> None:
    """Probe ``/health`` (and, if dedicated, the deployment status) until ready."""
    headers = {**base_headers(control_plane.api_key), RUN_ID_HEADER: run_id}
    url = health_url(endpoint.base_url, base_model)
    backoff = _Backoff(ready_timeout)
    last = "no answer yet"
    with make_client(headers=headers, timeout=PROBE_TIMEOUT) as client:
        while True:
            if endpoint.kind == "dedicated" and endpoint.deployment_id:
                status = _trainer_status(control_plane, endpoint.deployment_id)
                if status in TRAINER_TERMINAL_STATES:
                    raise TrainerTerminatedError(
                        f"trainer deployment {endpoint.deployment_id} is {status}; it will "
                        "not become ready", deployment_id=endpoint.deployment_id,
                        status=status, run_id=run_id, operation="wait_for_trainer")
            try:
                response = client.get(url)
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    return
                if is_gateway_rejection(response):
                    raise rejection(response, run_id=run_id, operation="wait_for_trainer")
                last = f"HTTP {response.status_code}"
            if not backoff.sleep():
                raise OperationTimeoutError(
                    f"the trainer at {endpoint.base_url} did not become ready within "
                    f"{ready_timeout}s (last probe: {last})",
                    run_id=run_id, operation="wait_for_trainer")


def _trainer_status(control_plane: ControlPlaneClient, deployment_id: str) -> str | None:
    # /health is the readiness signal; the status only aborts early, so a
    # control-plane blip is tolerated.
    try:
        return control_plane.trainer_status(deployment_id)
    except (httpx.TransportError, RequestRejectedError, LoopsError) as exc:
        logger.debug("trainer status of %s unavailable: %s", deployment_id, exc)
        return None


def wait_for_sampler(control_plane: ControlPlaneClient, endpoint: SamplerEndpoint,
                     ready_timeout: float | None) -> None:
    """Poll a dedicated sampler's deployment status until ACTIVE (spec 3.7).

    Transport errors and 5xx are tolerated; a 4xx propagates; a terminal
    status raises ``SamplerTerminatedError``; SCALED_TO_ZERO triggers one wake.
    """
    if endpoint.kind != "dedicated" or not endpoint.model_id or not endpoint.deployment_id:
        return
    backoff = _Backoff(ready_timeout)
    woken = False
    last = "no answer yet"
    while True:
        try:
            status = control_plane.sampler_status(endpoint.model_id, endpoint.deployment_id)
        except httpx.TransportError as exc:
            last = repr(exc)
        except RequestRejectedError as exc:
            if exc.status_code < 500:
                raise
            last = f"HTTP {exc.status_code}"
        else:
            if status == SAMPLER_READY_STATE:
                return
            if status in SAMPLER_TERMINAL_STATES:
                raise SamplerTerminatedError(
                    f"sampler deployment {endpoint.deployment_id} is {status}; it will not "
                    "become ready", deployment_id=endpoint.deployment_id, status=status,
                    operation="wait_for_sampler")
            if status == SAMPLER_SCALED_TO_ZERO and not woken:
                _wake(control_plane, endpoint)
                woken = True
            last = status
        if not backoff.sleep():
            raise OperationTimeoutError(
                f"sampler deployment {endpoint.deployment_id} did not become "
                f"{SAMPLER_READY_STATE} within {ready_timeout}s (last: {last})",
                operation="wait_for_sampler")


def _wake(control_plane: ControlPlaneClient, endpoint: SamplerEndpoint) -> None:
    url = endpoint.base_url.removesuffix("/sync") + "/wake"
    logger.info("sampler %s is scaled to zero; waking it", endpoint.sampler_id)
    with make_client(headers=base_headers(control_plane.api_key), timeout=30.0) as client:
        response = client.post(url)
    if response.status_code not in (200, 202):
        raise_for_status(response, operation="wake_sampler")


class ReadinessGate:
    """Runs a dedicated paired sampler's readiness wait once, before its first sample.

    A 4xx from the status route only logs a warning (the key may be allowed to
    sample but not to read statuses); other failures are raised and the next
    sample tries again.
    """

    def __init__(self, control_plane: ControlPlaneClient | None, endpoint: SamplerEndpoint,
                 ready_timeout: float | None, *, armed: bool) -> None:
        self._control_plane = control_plane
        self._endpoint = endpoint
        self._ready_timeout = ready_timeout
        self._armed = armed and control_plane is not None and endpoint.kind == "dedicated"
        self._lock = threading.Lock()

    @property
    def armed(self) -> bool:
        return self._armed

    def pass_through(self) -> None:
        if not self._armed:
            return
        with self._lock:
            if not self._armed:
                return
            assert self._control_plane is not None
            try:
                wait_for_sampler(self._control_plane, self._endpoint, self._ready_timeout)
            except RequestRejectedError as exc:
                logger.warning("sampler status unavailable (%s); sampling without the "
                               "readiness gate", exc)
            self._armed = False
