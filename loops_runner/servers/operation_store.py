"""The async-operation store: submit -> 202, long-poll for the outcome (spec 4.1).

Generic and reusable by any server whose work is too long for one HTTP
exchange. A route parses and validates its request, then hands the store a
*job* (a plain callable). The store:

* dedupes by ``Idempotency-Key`` (the key becomes the ``operation_id``; a
  replay of an accepted submit returns the same id and never runs the work
  again; the same key with a different body is a 409 conflict);
* enqueues the job before answering 202, so acceptance order is execution
  order within a *group* (a trainer's run); each *lane* runs its jobs one at
  a time on its own worker thread, so heavy work never blocks the event loop,
  and takes turns between the groups that have work queued (round-robin), so
  one run's burst of 50 operations does not hold another run's single
  operation until the burst drains (runs sharing a trainer, issue #17);
* answers ``GET /operations/{id}`` by holding the request until the job
  finishes or ``poll_hold_s`` passes (then 408: the SDK re-polls at once);
* keeps finished results for ``retention_s`` (default 1 h), with caps on the
  number and bytes of stored results (oldest finished evicted first), and
  remembers evicted keys (tombstones) so a late replay still never re-runs;
* answers 503 only once shutdown has begun (fatal for the SDK by design).

Results live in memory only. A restarted server has lost the state those
results describe (adapters, optimizer moments), so answering polls of
pre-restart operations would hide that loss; a 404 (``UnknownRequestError``)
is the honest answer there.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import json
import logging
import re
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from loops_runner.servers.common import Refusal, error_response
from loops_runner.servers.openapi import answers
from loops_runner.wire.headers import IDEMPOTENCY_KEY_HEADER
from loops_runner.wire.operations import OperationAccepted, OperationDone, OperationFailed

logger = logging.getLogger(__name__)

IDEMPOTENCY_HEADER = IDEMPOTENCY_KEY_HEADER
# Keys become operation ids and URL path segments; the SDK sends 32 hex chars
# (or a dashed UUID). Anything printable and short is accepted.
_KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,256}$")

DEFAULT_POLL_HOLD_S = 30.0
DEFAULT_RETENTION_S = 3600.0
DEFAULT_MAX_FINISHED = 20_000
DEFAULT_MAX_RESULT_BYTES = 1 << 30
DEFAULT_MAX_TOMBSTONES = 200_000
DEFAULT_LANE = "default"
_DEFAULT_GROUP = "\0default"  # cannot collide with a run id (those are storage names)

Job = Callable[[], Any]


class OpState(enum.StrEnum):
    pending = "pending"
    running = "running"
    done = "done"
    error = "error"


@dataclass
class Accepted:
    """What ``prepare`` hands back: the job, plus an optional acceptance hook.

    ``on_accept`` runs on the event loop in the same step as the enqueue (so it
    is ordered exactly like acceptance), e.g. to mark a run slot as known.
    """

    job: Job
    lane: str = DEFAULT_LANE
    on_accept: Callable[[], None] | None = None
    # Jobs of one group run in acceptance order; groups take turns. None = the
    # lane's shared default group.
    group: str | None = None


@dataclass
class StoredOperation:
    operation_id: str
    kind: str
    fingerprint: str
    job: Job | None
    accepted_index: int
    accepted_at: float = field(default_factory=time.time)
    state: OpState = OpState.pending
    started_at: float | None = None
    finished_at: float | None = None
    executed_index: int | None = None
    body: bytes | None = None  # the serialized poll answer once finished
    finished: asyncio.Event = field(default_factory=asyncio.Event)


def encode_result(result: Any) -> bytes:
    """The JSON of a job's result (a pydantic model, a dict or None)."""
    if isinstance(result, BaseModel):
        return result.model_dump_json().encode()
    return json.dumps({} if result is None else result, separators=(",", ":"),
                      allow_nan=False).encode()


def done_body(result_json: bytes) -> bytes:
    return b'{"status":"done","result":' + result_json + b"}"


def error_body(exc: BaseException) -> bytes:
    message = str(exc) or type(exc).__name__
    return json.dumps({"status": "error", "error": message,
                       "error_class": type(exc).__name__}).encode()


class _Lane:
    """One worker thread and its queues: one FIFO per group, served round-robin.

    ``urgent`` holds internal calls that belong to no group (the model load,
    janitor sweeps): they go before any group's next job.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        # Groups with queued work, in turn order: the head goes next, then
        # moves to the back if it still has work.
        self.groups: OrderedDict[str, deque[StoredOperation]] = OrderedDict()
        self.urgent: deque[StoredOperation] = deque()
        self.wakeup = asyncio.Event()
        self.closed = False
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"op-{name}")
        self.task: asyncio.Task[None] | None = None
        self.executed = 0

    def put(self, op: StoredOperation, group: str | None) -> None:
        if group is None and op.kind == "internal":
            self.urgent.append(op)
        else:
            self.groups.setdefault(group or _DEFAULT_GROUP, deque()).append(op)
        self.wakeup.set()

    def take(self) -> StoredOperation | None:
        """The next job to run, or None when nothing is queued."""
        if self.urgent:
            return self.urgent.popleft()
        if not self.groups:
            return None
        group, queue = next(iter(self.groups.items()))
        op = queue.popleft()
        del self.groups[group]
        if queue:
            self.groups[group] = queue
        return op

    def close(self) -> None:
        self.closed = True
        self.wakeup.set()


class OperationStore:
    """In-memory operation table with idempotent submits and long-poll reads."""

    def __init__(
        self,
        *,
        poll_hold_s: float = DEFAULT_POLL_HOLD_S,
        retention_s: float = DEFAULT_RETENTION_S,
        max_finished: int = DEFAULT_MAX_FINISHED,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
        max_tombstones: int = DEFAULT_MAX_TOMBSTONES,
    ) -> None:
        self.poll_hold_s = poll_hold_s
        self.retention_s = retention_s
        self.max_finished = max_finished
        self.max_result_bytes = max_result_bytes
        self.max_tombstones = max_tombstones
        self._ops: dict[str, StoredOperation] = {}
        # Finished operations in finish order: the eviction order.
        self._finished: OrderedDict[str, StoredOperation] = OrderedDict()
        self._finished_bytes = 0
        # Keys of evicted operations -> fingerprint, so a late replay of an
        # evicted submit is still recognised (202, then 404 on poll) and
        # never runs the work a second time.
        self._tombstones: OrderedDict[str, str] = OrderedDict()
        self._lanes: dict[str, _Lane] = {}
        self._accepted = 0
        self._shutting_down = False
        self._shutdown_event: asyncio.Event | None = None

    # -- introspection --------------------------------------------------------

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def get(self, operation_id: str) -> StoredOperation | None:
        return self._ops.get(operation_id)

    def counts(self) -> dict[str, int]:
        states = [op.state for op in self._ops.values()]
        return {state.value: states.count(state) for state in OpState} | {
            "tombstones": len(self._tombstones), "result_bytes": self._finished_bytes}

    # -- submit ---------------------------------------------------------------

    def _lane(self, name: str) -> _Lane:
        lane = self._lanes.get(name)
        if lane is None:
            lane = _Lane(name)
            lane.task = asyncio.get_running_loop().create_task(self._consume(lane))
            self._lanes[name] = lane
        return lane

    def _known(self, key: str) -> str | None:
        """The fingerprint recorded for ``key``, whether live or evicted."""
        op = self._ops.get(key)
        if op is not None:
            return op.fingerprint
        return self._tombstones.get(key)

    async def submit(
        self,
        *,
        kind: str,
        body: bytes,
        key: str | None,
        prepare: Callable[[], Awaitable[Accepted]],
    ) -> Response:
        """Accept (202), replay (202, same id), refuse (4xx) or conflict (409)."""
        if self._shutting_down:
            return error_response(503, "server is shutting down", "SHUTTING_DOWN")
        if key is None or key == "":
            key = uuid.uuid4().hex
        elif not _KEY_PATTERN.fullmatch(key):
            return error_response(
                422, f"{IDEMPOTENCY_HEADER} must be 1-256 printable ASCII characters "
                "without spaces", "INVALID_IDEMPOTENCY_KEY")
        fingerprint = hashlib.sha256(kind.encode() + b"\0" + body).hexdigest()

        replay = self._replay(key, fingerprint)
        if replay is not None:
            return replay
        try:
            accepted = await prepare()
        except Refusal as rejection:
            return rejection.response()
        if self._shutting_down:
            return error_response(503, "server is shutting down", "SHUTTING_DOWN")
        # A concurrent submit with the same key may have been accepted while
        # this one was being prepared: from here to the enqueue nothing awaits,
        # so check-and-enqueue is atomic on the event loop.
        replay = self._replay(key, fingerprint)
        if replay is not None:
            return replay
        self._accepted += 1
        op = StoredOperation(key, kind, fingerprint, accepted.job, self._accepted)
        self._ops[key] = op
        if accepted.on_accept is not None:
            accepted.on_accept()
        self._lane(accepted.lane).put(op, accepted.group)
        self._expire()
        return self._accepted_response(key)

    def _replay(self, key: str, fingerprint: str) -> Response | None:
        known = self._known(key)
        if known is None:
            return None
        if known != fingerprint:
            return error_response(
                409, f"{IDEMPOTENCY_HEADER} {key!r} was already used for a different "
                "request (operation or body differs)", "IDEMPOTENCY_CONFLICT")
        return self._accepted_response(key)

    @staticmethod
    def _accepted_response(operation_id: str) -> JSONResponse:
        body = OperationAccepted(operation_id=operation_id).model_dump()
        return JSONResponse(body, status_code=202,
                            headers={"Location": f"/operations/{quote(operation_id, safe='')}"})

    async def call(self, fn: Callable[[], Any], lane: str = DEFAULT_LANE,
                   group: str | None = None) -> Any:
        """Run ``fn`` on a lane's worker: after everything of ``group`` accepted before
        it, or, without a group, before any queued job (the model load, sweeps).

        For cheap synchronous reads that must see the state a run's queued
        operations leave behind (e.g. diagnostics); no operation record.
        """
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def run() -> None:
            try:
                value = fn()
            except BaseException as exc:  # handed to the awaiting coroutine
                loop.call_soon_threadsafe(_settle, future, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, value, None)

        loop = asyncio.get_running_loop()
        marker = StoredOperation(f"internal-{uuid.uuid4().hex}", "internal", "", run, 0)
        self._lane(lane).put(marker, group)
        return await future

    # -- execution ------------------------------------------------------------

    async def _consume(self, lane: _Lane) -> None:
        loop = asyncio.get_running_loop()
        while True:
            op = lane.take()
            if op is None:
                # Closing drains: operations accepted before shutdown still run
                # (their clients were told 202), then the worker ends.
                if lane.closed:
                    return
                lane.wakeup.clear()
                await lane.wakeup.wait()
                continue
            if op.kind == "internal":
                assert op.job is not None
                await loop.run_in_executor(lane.executor, op.job)
                continue
            op.state = OpState.running
            op.started_at = time.time()
            lane.executed += 1
            op.executed_index = lane.executed
            body, failed = await loop.run_in_executor(lane.executor, _run_job, op)
            self._finish(op, body, failed)

    def _finish(self, op: StoredOperation, body: bytes, failed: bool) -> None:
        op.job = None  # drop references to request tensors
        op.body = body
        op.state = OpState.error if failed else OpState.done
        op.finished_at = time.time()
        self._finished[op.operation_id] = op
        self._finished_bytes += len(body)
        op.finished.set()
        self._expire()

    def _expire(self) -> None:
        """Evict finished results past retention or over the caps, oldest first."""
        now = time.time()
        while self._finished:
            oldest_id, oldest = next(iter(self._finished.items()))
            over_caps = (len(self._finished) > self.max_finished
                         or self._finished_bytes > self.max_result_bytes)
            expired = oldest.finished_at is not None and now - oldest.finished_at > (
                self.retention_s)
            if not (over_caps or expired):
                break
            del self._finished[oldest_id]
            self._finished_bytes -= len(oldest.body or b"")
            self._ops.pop(oldest_id, None)
            self._tombstones[oldest_id] = oldest.fingerprint
        while len(self._tombstones) > self.max_tombstones:
            self._tombstones.popitem(last=False)

    # -- poll -----------------------------------------------------------------

    async def poll(self, operation_id: str, hold_s: float | None = None) -> Response:
        if self._shutting_down:
            return error_response(503, "server is shutting down", "SHUTTING_DOWN")
        op = self._ops.get(operation_id)
        if op is None:
            return error_response(
                404, f"no operation {operation_id!r} (never submitted here, or its result "
                "expired)", "UNKNOWN_OPERATION")
        if op.body is None:
            hold = self.poll_hold_s if hold_s is None else min(hold_s, self.poll_hold_s)
            await self._wait(op, hold)
        if self._shutting_down:
            return error_response(503, "server is shutting down", "SHUTTING_DOWN")
        if op.body is None:
            return error_response(408, f"operation {operation_id!r} is still {op.state.value}",
                                  "PENDING")
        return Response(op.body, status_code=200, media_type="application/json")

    async def _wait(self, op: StoredOperation, hold: float) -> None:
        if self._shutdown_event is None:
            self._shutdown_event = asyncio.Event()
        waiters = [asyncio.ensure_future(op.finished.wait()),
                   asyncio.ensure_future(self._shutdown_event.wait())]
        try:
            await asyncio.wait(waiters, timeout=hold, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    # -- shutdown -------------------------------------------------------------

    def begin_shutdown(self) -> None:
        """From now on submits and polls answer 503; held polls are released."""
        self._shutting_down = True
        if self._shutdown_event is not None:
            self._shutdown_event.set()
        for lane in self._lanes.values():
            lane.close()

    def begin_shutdown_threadsafe(self, loop: asyncio.AbstractEventLoop) -> None:
        """For signal handlers and other threads."""
        self._shutting_down = True
        loop.call_soon_threadsafe(self.begin_shutdown)

    def close(self) -> None:
        for lane in self._lanes.values():
            lane.executor.shutdown(wait=False, cancel_futures=True)


def _settle(future: asyncio.Future[Any], value: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(value)


def _run_job(op: StoredOperation) -> tuple[bytes, bool]:
    """Run on the lane's thread: execute, then serialize there too (results can be big)."""
    assert op.job is not None
    try:
        return done_body(encode_result(op.job())), False
    except Exception as exc:
        if not isinstance(exc, ValueError | FileNotFoundError | KeyError | PermissionError):
            logger.exception("operation %s (%s) failed", op.operation_id, op.kind)
        else:
            logger.warning("operation %s (%s) failed: %s", op.operation_id, op.kind, exc)
        return error_body(exc), True


def install_operation_routes(app: FastAPI, store: OperationStore,
                             errors: dict[int | str, Any] | None = None) -> None:
    """``GET /operations/{id}``: the long-poll (ids may hold any URL-encoded character).

    ``errors`` maps statuses to the error model, for the OpenAPI document.
    """
    @app.get("/operations/{operation_id:path}",
             responses=answers({200: OperationDone | OperationFailed, **(errors or {})}))
    async def get_operation(operation_id: str, request: Request) -> Response:
        return await store.poll(operation_id)

    _ = get_operation


def idempotency_key(request: Request) -> str | None:
    return request.headers.get(IDEMPOTENCY_HEADER)

