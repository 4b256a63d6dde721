"""The trainer's async-operation protocol, client side (spec 4.1).

``submit`` POSTs an operation with an ``Idempotency-Key`` (32 hex, reused by
every retry of that submit) and returns the accepted operation's id; ``poll``
long-polls ``GET /operations/{id}`` until the outcome is known. Both exist as
plain and ``async`` functions over the same decisions.

Budgets: a submit retries "not ready" answers and lost connections until
``ready_timeout`` (a trainer may still be starting). A poll waits up to the
caller's budget, re-polling 408 at once and 502 or lost connections after
2 s; but if the trainer stays unreachable for longer than ``timeout`` (the
client's per-call bound) the poll gives up, so a dead trainer surfaces as an
error instead of an hour-long wait.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from loops_runner.sdk import retry
from loops_runner.sdk.errors import (
    LoopsError,
    OperationTimeoutError,
    RemoteOpError,
    ServerShutdownError,
    ServerUnavailableError,
    UnknownRequestError,
)
from loops_runner.sdk.http import IDEMPOTENCY_KEY_HEADER, AsyncClients, make_client, rejection

logger = logging.getLogger("loops_runner.sdk")

T = TypeVar("T", bound=BaseModel)

POLL_READ_TIMEOUT = 35.0  # above the server's ~30 s hold, so a quiet poll ends in 408
POLL_PAUSE = 2.0  # after a 502 or a lost connection
UNEXPECTED_STATUS_PAUSE = 1.0
CONNECT_TIMEOUT = 10.0
ACCEPTANCE_SCHEMA_VERSION = 1
# Every pipelined future may hold a connection while it polls.
TRAINER_LIMITS = httpx.Limits(max_connections=200, max_keepalive_connections=200,
                              keepalive_expiry=120.0)
# Any transport failure of a poll (a read timeout included) is retried.
_TRANSPORT_ERRORS = (httpx.TransportError,)


@dataclass(frozen=True)
class OperationRef:
    """An accepted operation: its name, id and run."""

    name: str
    operation_id: str
    run_id: str | None

    @property
    def context(self) -> dict[str, str | None]:
        return {"run_id": self.run_id, "operation": self.name,
                "operation_id": self.operation_id}


def new_idempotency_key() -> str:
    return uuid.uuid4().hex


def operation_id_from(response: httpx.Response, context: dict[str, Any]) -> str:
    """The id of a 2xx acceptance; anything else is refused, never taken for a result."""
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        payload = {}
    operation_id = payload.get("operation_id")
    version = payload.get("schema_version", ACCEPTANCE_SCHEMA_VERSION)
    if not isinstance(operation_id, str) or not operation_id \
            or version != ACCEPTANCE_SCHEMA_VERSION:
        raise LoopsError(f"unsupported operation acceptance (HTTP {response.status_code}): "
                         f"{response.text[:300]!r}", **context)
    return operation_id


class TrainerConnection:
    """HTTP access to one trainer: the clients, the URL and the budgets."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: dict[str, str],
        timeout: float | None,
        ready_timeout: float | None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = headers
        self.timeout = timeout
        self.ready_timeout = ready_timeout
        http_timeout = httpx.Timeout(timeout, connect=_connect_timeout(timeout))
        self.client = make_client(headers=headers, timeout=http_timeout, limits=TRAINER_LIMITS)
        self.async_clients = AsyncClients(headers=headers, timeout=http_timeout,
                                          limits=TRAINER_LIMITS)

    @property
    def closed(self) -> bool:
        return self.client.is_closed

    def close(self) -> None:
        self.client.close()

    # -- submit ------------------------------------------------------------------

    def _submit_request(self, op: str, body: bytes, key: str) -> dict[str, Any]:
        return {
            "method": "POST",
            "url": f"{self.base_url}/{op}",
            "content": body,
            "headers": {"Content-Type": "application/json", IDEMPOTENCY_KEY_HEADER: key},
        }

    def _accepted(self, outcome: retry.Outcome, op: str, run_id: str | None, key: str) -> str:
        context = {"run_id": run_id, "operation": op, "operation_id": key}
        response = outcome.response
        if response.status_code == 503:
            raise ServerShutdownError("the trainer is shutting down (HTTP 503 on submit)",
                                      **context)
        if response.is_error:
            raise rejection(response, note=outcome.note(), **context)
        return operation_id_from(response, context)

    def _read_timeout(self, op: str, run_id: str | None, key: str,
                      exc: Exception) -> ServerUnavailableError:
        return ServerUnavailableError(
            f"the trainer did not answer the submit within {self.timeout}s "
            f"({type(exc).__name__}); it may or may not have accepted it",
            run_id=run_id, operation=op, operation_id=key)

    def submit(self, op: str, body: bytes, *, run_id: str | None) -> OperationRef:
        key = new_idempotency_key()
        request = self._submit_request(op, body, key)
        context = {"run_id": run_id, "operation": op, "operation_id": key}
        try:
            outcome = retry.send(lambda: self.client.request(**request), retry.SUBMIT,
                                 self.ready_timeout, what=op, context=context)
        except httpx.TimeoutException as exc:
            raise self._read_timeout(op, run_id, key, exc) from exc
        return OperationRef(op, self._accepted(outcome, op, run_id, key), run_id)

    async def submit_async(self, op: str, body: bytes, *, run_id: str | None) -> OperationRef:
        key = new_idempotency_key()
        request = self._submit_request(op, body, key)
        context = {"run_id": run_id, "operation": op, "operation_id": key}
        client = self.async_clients.get()
        try:
            outcome = await retry.send_async(lambda: client.request(**request), retry.SUBMIT,
                                             self.ready_timeout, what=op, context=context)
        except httpx.TimeoutException as exc:
            raise self._read_timeout(op, run_id, key, exc) from exc
        return OperationRef(op, self._accepted(outcome, op, run_id, key), run_id)

    # -- poll --------------------------------------------------------------------

    def _poll_url(self, ref: OperationRef) -> str:
        return f"{self.base_url}/operations/{quote(ref.operation_id, safe='')}"

    def poll(self, ref: OperationRef, result_type: type[T], budget: float | None) -> T:
        state = PollState(ref, result_type, budget, self.timeout)
        return poll(self.client, self._poll_url(ref), state)

    async def poll_async(self, ref: OperationRef, result_type: type[T],
                         budget: float | None) -> T:
        state = PollState(ref, result_type, budget, self.timeout)
        return await poll_async(self.async_clients.get(), self._poll_url(ref), state)


def poll(client: httpx.Client, url: str, state: PollState[T]) -> T:
    """Long-poll ``url`` until ``state`` reads an outcome from an answer."""
    while True:
        try:
            response = client.get(url, timeout=state.request_timeout())
        except _TRANSPORT_ERRORS as exc:
            time.sleep(state.lost(exc))
            continue
        step = state.answer(response)
        if isinstance(step, _Done):
            return step.value
        time.sleep(step)


async def poll_async(client: httpx.AsyncClient, url: str, state: PollState[T]) -> T:
    while True:
        try:
            response = await client.get(url, timeout=state.request_timeout())
        except _TRANSPORT_ERRORS as exc:
            await asyncio.sleep(state.lost(exc))
            continue
        step = state.answer(response)
        if isinstance(step, _Done):
            return step.value
        await asyncio.sleep(step)


@dataclass
class _Done:
    value: Any


class PollState(Generic[T]):
    """The decisions of one poll loop (spec 2.4, "Trainer op poll"), I/O-free.

    ``transient_statuses`` re-poll after a pause; ``retry_after_statuses``
    re-poll after their Retry-After and are refused without one (the queued
    sampler's 503, spec 6.6).
    """

    def __init__(self, ref: OperationRef, result_type: type[T], budget: float | None,
                 unreachable_budget: float | None, *,
                 transient_statuses: frozenset[int] = frozenset({502}),
                 retry_after_statuses: frozenset[int] = frozenset()) -> None:
        self.ref = ref
        self.result_type = result_type
        self.budget = budget
        self.started = time.monotonic()
        self.deadline = math.inf if budget is None else self.started + budget
        self.unreachable_budget = math.inf if unreachable_budget is None else unreachable_budget
        self.unreachable_since: float | None = None
        self.transient_statuses = transient_statuses
        self.retry_after_statuses = retry_after_statuses

    def _remaining(self) -> float:
        return self.deadline - time.monotonic()

    def _check_deadline(self) -> None:
        if self._remaining() <= 0:
            raise OperationTimeoutError(
                f"no outcome within {self.budget}s; the operation may still finish "
                "(call result() again to keep waiting)", **self.ref.context)

    def request_timeout(self) -> httpx.Timeout:
        self._check_deadline()
        read = min(POLL_READ_TIMEOUT, max(self._remaining(), 0.05))
        return httpx.Timeout(read, connect=min(CONNECT_TIMEOUT, read))

    def _pause(self, seconds: float) -> float:
        self._check_deadline()
        return max(0.0, min(seconds, self._remaining()))

    def lost(self, exc: Exception) -> float:
        """A transport error: pause 2 s, unless the trainer is gone for too long."""
        now = time.monotonic()
        self._check_deadline()
        if self.unreachable_since is None:
            self.unreachable_since = now
        down_for = now - self.unreachable_since
        if down_for >= self.unreachable_budget:
            raise ServerUnavailableError(
                f"lost contact with the trainer for {down_for:.1f}s while waiting for the "
                f"outcome ({type(exc).__name__}: {exc or 'no detail'})", **self.ref.context)
        logger.debug("poll of %s failed (%r); retrying", self.ref.operation_id, exc)
        return self._pause(min(POLL_PAUSE, self.unreachable_budget - down_for))

    def answer(self, response: httpx.Response) -> _Done | float:
        """The outcome in ``response``, or how long to pause before polling again."""
        self.unreachable_since = None
        status = response.status_code
        context = self.ref.context
        result_type = self.result_type
        if status == 408:
            return self._pause(0.0)
        if status in self.retry_after_statuses:
            delay = retry.retry_after_seconds(response)
            if delay is None:
                raise rejection(response, **context)
            return self._pause(delay)
        if status == 404:
            raise UnknownRequestError(
                "the trainer has no record of this operation (never accepted there, the "
                "trainer restarted, or the result expired); resubmit if still wanted",
                **context)
        if status == 503:
            raise ServerShutdownError("the trainer is shutting down (HTTP 503 on poll)",
                                      **context)
        if status in self.transient_statuses:
            return self._pause(POLL_PAUSE)
        if response.is_error:
            raise rejection(response, **context)
        try:
            body = response.json()
        except ValueError as exc:
            raise LoopsError(f"poll answer is not JSON: {response.text[:300]!r}",
                             **context) from exc
        outcome = body.get("status") if isinstance(body, dict) else None
        if outcome == "error":
            raise RemoteOpError(str(body.get("error") or "unknown error"),
                                body.get("error_class"), **context)
        if outcome == "done":
            try:
                return _Done(result_type.model_validate(body.get("result")))
            except ValidationError as exc:
                raise LoopsError(f"malformed {result_type.__name__} in the result: {exc}",
                                 **context) from exc
        logger.warning("poll of %s answered an unexpected body %r; polling again",
                       self.ref.operation_id, body)
        return self._pause(UNEXPECTED_STATUS_PAUSE)


def _connect_timeout(timeout: float | None) -> float:
    return CONNECT_TIMEOUT if timeout is None else min(CONNECT_TIMEOUT, timeout)
