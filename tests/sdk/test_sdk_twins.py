"""The client's sync and async twins decide alike: one table of cases each, both twins run it.

``retry.send`` and ``retry.send_async`` are two loops over the same policy;
each case scripts the answers a server gives and says what the caller must
see. Budgets are short and waits come from ``Retry-After: 0``, so the table
runs in well under a second. ``chunking.upload`` and ``upload_async`` send the
chunks of one oversized request: the same cap on uploads in flight, the same
refs and errors. Every public ``*_async`` method takes exactly the parameters
of its plain twin. (The clients' twins against real servers:
test_sdk_client_twins.py.)
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest

from loops_runner.sdk import (
    SamplingClient,
    ServerUnavailableError,
    ServiceClient,
    TrainingClient,
    chunking,
    retry,
)

REQUEST = httpx.Request("POST", "http://127.0.0.1:9/sample")
VLLM_INVALID = {"error": {"type": "BadRequestError", "message": "bad", "code": 400}}

Answer = httpx.Response | Exception


def answer(status: int, body: object = None, headers: dict[str, str] | None = None) -> Answer:
    return httpx.Response(status, json=body if body is not None else {}, headers=headers,
                          request=REQUEST)


@dataclass(frozen=True)
class Case:
    name: str
    policy: retry.RetryPolicy
    answers: list[Answer]  # the last one repeats forever
    budget: float
    attempts: int | None  # None: at least one
    status: int | None  # the final answer's status; None when an exception is expected
    exhausted: bool = False
    raises: type[Exception] | None = None


CASES = [
    Case("success at once", retry.SUBMIT, [answer(200)], 5.0, 1, 200),
    Case("vLLM invalid request is never retried", retry.SAMPLE,
         [answer(400, VLLM_INVALID)], 5.0, 1, 400),
    Case("not-ready until the budget runs out", retry.SUBMIT, [answer(502)], 0.2, None, 502,
         exhausted=True),
    Case("503 with Retry-After is a pause", retry.QUEUED_SAMPLE,
         [answer(503, headers={"Retry-After": "0"}), answer(202)], 5.0, 2, 202),
    Case("503 without Retry-After is final", retry.QUEUED_SAMPLE, [answer(503)], 5.0, 1, 503),
    Case("a gateway rejection is final", retry.SUBMIT,
         [answer(404, headers={"X-Baseten-Error-Source": "06"})], 5.0, 1, 404),
    Case("an unreachable server outlasting the budget", retry.SUBMIT,
         [httpx.ConnectError("refused", request=REQUEST)], 0.2, None, None,
         raises=ServerUnavailableError),
    Case("a read timeout is not resent", retry.SUBMIT,
         [httpx.ReadTimeout("slow", request=REQUEST)], 5.0, None, None,
         raises=httpx.ReadTimeout),
]


def scripted(answers: list[Answer]) -> tuple[Callable[[], httpx.Response], list[int]]:
    calls = [0]

    def next_answer() -> httpx.Response:
        item = answers[min(calls[0], len(answers) - 1)]
        calls[0] += 1
        if isinstance(item, Exception):
            raise item
        return item

    return next_answer, calls


def run_sync(case: Case) -> tuple[retry.Outcome, int]:
    request, calls = scripted(case.answers)
    return retry.send(request, case.policy, case.budget, what=case.name), calls[0]


def run_async(case: Case) -> tuple[retry.Outcome, int]:
    request, calls = scripted(case.answers)

    async def arequest() -> httpx.Response:
        return request()

    outcome = asyncio.run(retry.send_async(arequest, case.policy, case.budget, what=case.name))
    return outcome, calls[0]


@pytest.mark.parametrize("twin", [run_sync, run_async], ids=["sync", "async"])
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_the_twins_decide_alike(case: Case, twin: Callable[[Case], tuple]) -> None:
    if case.raises is not None:
        with pytest.raises(case.raises):
            twin(case)
        return
    outcome, calls = twin(case)
    assert outcome.response.status_code == case.status
    assert outcome.exhausted is case.exhausted
    assert outcome.attempts == calls
    if case.attempts is not None:
        assert calls == case.attempts
    else:
        assert calls >= 1


# -- chunk uploads ---------------------------------------------------------------


@dataclass(frozen=True)
class UploadCase:
    name: str
    bodies: int
    refused: frozenset[int] = frozenset()  # indices whose submit raises


UPLOAD_CASES = [
    UploadCase("one body", 1),
    UploadCase("one refused body", 1, frozenset({0})),
    UploadCase("ten bodies, at most the cap in flight", 10),
    UploadCase("two of ten refused", 10, frozenset({3, 7})),
]
HOLD = 0.2  # seconds each upload takes: long enough for the cap to fill


class InFlight:
    def __init__(self) -> None:
        self.now = self.peak = 0
        self.lock = threading.Lock()

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


def _answer(case: UploadCase, body: bytes) -> str:
    index = int(body)
    if index in case.refused:
        raise ValueError(f"refused {index}")
    return f"ref-{index}"


def upload_sync(case: UploadCase) -> tuple[list[str], list[BaseException], int]:
    flight = InFlight()

    def submit(body: bytes) -> str:
        flight.enter()
        try:
            time.sleep(HOLD)
            return _answer(case, body)
        finally:
            flight.leave()

    refs, errors = chunking.upload(submit, [str(i).encode() for i in range(case.bodies)])
    return refs, errors, flight.peak


def upload_async(case: UploadCase) -> tuple[list[str], list[BaseException], int]:
    flight = InFlight()

    async def submit(body: bytes) -> str:
        flight.enter()
        try:
            await asyncio.sleep(HOLD)
            return _answer(case, body)
        finally:
            flight.leave()

    refs, errors = asyncio.run(chunking.upload_async(
        submit, [str(i).encode() for i in range(case.bodies)]))
    return refs, errors, flight.peak


@pytest.mark.parametrize("twin", [upload_sync, upload_async], ids=["sync", "async"])
@pytest.mark.parametrize("case", UPLOAD_CASES, ids=[case.name for case in UPLOAD_CASES])
def test_the_upload_twins_cap_alike_and_report_alike(case: UploadCase,
                                                     twin: Callable[[UploadCase], tuple]) -> None:
    refs, errors, peak = twin(case)
    assert refs == [f"ref-{i}" for i in range(case.bodies) if i not in case.refused]
    assert [str(error) for error in errors] == [f"refused {i}" for i in sorted(case.refused)]
    assert peak == min(case.bodies, chunking.CHUNK_UPLOADS)


# -- the public twins' parameters ------------------------------------------------------


@pytest.mark.parametrize("cls", [TrainingClient, SamplingClient, ServiceClient],
                         ids=lambda cls: cls.__name__)
def test_every_async_twin_takes_its_plain_twins_parameters(cls: type) -> None:
    twins = [name for name in vars(cls) if name.endswith("_async") and not name.startswith("_")]
    assert twins
    for name in twins:
        plain = getattr(cls, name.removesuffix("_async"))
        twin = getattr(cls, name)
        assert inspect.iscoroutinefunction(twin), name
        assert list(inspect.signature(twin).parameters.values()) == \
            list(inspect.signature(plain).parameters.values()), name
