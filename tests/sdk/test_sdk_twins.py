"""The sync and async twins of the retry loop decide alike: one table of cases, both run it.

``retry.send`` and ``retry.send_async`` are two loops over the same policy;
each case scripts the answers a server gives and says what the caller must
see. Budgets are short and waits come from ``Retry-After: 0``, so the table
runs in well under a second.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest

from loops_runner.sdk import ServerUnavailableError, retry

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
