"""Retry policies of spec 2.3-2.4, run with tenacity.

Each call site has a policy: which statuses mean "not ready yet, try again",
which transport errors are safe to repeat, and how long to keep trying (the
budget, normally ``ready_timeout``). Everything else fails at once, and so do
the three permanent-rejection signals (gateway rejection, deactivated model,
vLLM ``BadRequestError``) whatever their status.

Waits grow exponentially from about 1 s to at most 30 s, plus up to 5 s of
jitter, and are clipped to what is left of the budget so the last attempt
happens at the deadline rather than long after it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_delay,
    stop_never,
    wait_exponential_jitter,
)

from loops_runner.sdk.errors import ServerUnavailableError
from loops_runner.sdk.http import is_permanent_rejection

logger = logging.getLogger("loops_runner.sdk")

# Statuses a cold server answers while it starts (spec 2.3).
NOT_READY_STATUSES = frozenset({400, 404, 408, 502})
# Transport failures where the request never arrived or its answer was lost.
# The protocol makes repeating them safe (idempotency keys, idempotent reads).
RESEND_ERRORS: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.ReadError,
    httpx.RemoteProtocolError,
)
MAX_RETRY_AFTER = 60.0


@dataclass(frozen=True)
class RetryPolicy:
    """What one call site retries (spec 2.4)."""

    name: str
    statuses: frozenset[int]
    transport_errors: tuple[type[Exception], ...] = RESEND_ERRORS
    # Retried only when the answer carries a Retry-After (then wait that long).
    retry_after_statuses: frozenset[int] = field(default_factory=frozenset)
    # How loudly to announce a retry: a retried /sample regenerates from scratch.
    log_level: int = logging.INFO

    def retries_response(self, response: httpx.Response) -> bool:
        if is_permanent_rejection(response):
            return False
        status = response.status_code
        if status in self.retry_after_statuses:
            return retry_after_seconds(response) is not None
        return status in self.statuses


# Trainer operation submits: 503 is a shutdown (fatal), a read timeout is fatal.
SUBMIT = RetryPolicy("submit", NOT_READY_STATUSES)
# Dedicated/local /sample: 503 is transient here; a read timeout is reported
# as SampleTimeoutError by the caller.
SAMPLE = RetryPolicy("sample", NOT_READY_STATUSES | {503}, log_level=logging.WARNING)
# Queued (serverless) /sample submit: the queue answers at once, so 400/404
# are real refusals; a 503 is a pause only with Retry-After.
QUEUED_SAMPLE = RetryPolicy("queued sample", frozenset({408, 502, 504}),
                            retry_after_statuses=frozenset({503}))
# Sampler GET /v1/models.
MODELS = RetryPolicy("list models", NOT_READY_STATUSES)


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The Retry-After delay in seconds (capped), or None if it names none."""
    try:
        delay = float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        return None
    if not math.isfinite(delay):
        return None
    return min(max(delay, 0.0), MAX_RETRY_AFTER)


class RetryableStatus(Exception):
    """Raised inside an attempt for a status the policy retries."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


@dataclass
class Outcome:
    """The last response of a retried call and what it took to get it."""

    response: httpx.Response
    attempts: int
    elapsed: float
    exhausted: bool  # the budget ran out while the status was still retryable

    def note(self) -> str | None:
        if not self.exhausted:
            return None
        return f"still failing after {self.attempts} attempts over {self.elapsed:.1f}s"


def _wait(policy: RetryPolicy, deadline: float) -> Callable[[RetryCallState], float]:
    backoff = wait_exponential_jitter(initial=1, max=30, jitter=5)

    def wait(state: RetryCallState) -> float:
        delay = backoff(state)
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, RetryableStatus) and exc.response.status_code in (
            policy.retry_after_statuses
        ):
            # "Retry-After: 0" means now, not the backoff.
            asked = retry_after_seconds(exc.response)
            delay = delay if asked is None else asked
        return max(0.0, min(delay, deadline - time.monotonic()))

    return wait


def _log_retry(policy: RetryPolicy, what: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        reason = str(exc) if isinstance(exc, RetryableStatus) else repr(exc)
        sleep = state.next_action.sleep if state.next_action is not None else 0.0
        logger.log(policy.log_level, "%s: %s not ready (%s); retrying in %.1fs (attempt %d)",
                   what, policy.name, reason, sleep, state.attempt_number)

    return before_sleep


def _tenacity_args(policy: RetryPolicy, budget: float | None, what: str) -> dict:
    deadline = math.inf if budget is None else time.monotonic() + budget
    retryable = (RetryableStatus, *policy.transport_errors)
    return {
        "retry": retry_if_exception(lambda exc: isinstance(exc, retryable)),
        "wait": _wait(policy, deadline),
        "stop": stop_never if budget is None else stop_after_delay(budget),
        "before_sleep": _log_retry(policy, what),
        "reraise": True,
    }


class _Tries:
    """The count and the clock of one retried call, and what each way it ends returns.

    ``send`` and ``send_async`` differ only in how they call and wait; tenacity
    calls ``attempt`` (or ``attempt_async``) until the policy stops it.
    """

    def __init__(self, policy: RetryPolicy, what: str, context: dict | None) -> None:
        self.policy = policy
        self.what = what
        self.context = context or {}
        self.started = time.monotonic()
        self.attempts = 0

    def _judge(self, response: httpx.Response) -> Outcome:
        if self.policy.retries_response(response):
            raise RetryableStatus(response)
        return Outcome(response, self.attempts, time.monotonic() - self.started, False)

    def attempt(self, request: Callable[[], httpx.Response]) -> Outcome:
        self.attempts += 1
        return self._judge(request())

    async def attempt_async(self, request: Callable[[], Awaitable[httpx.Response]]) -> Outcome:
        self.attempts += 1
        return self._judge(await request())

    def ended(self, exc: Exception) -> Outcome:
        """The outcome of a call that retried until ``exc`` stopped it.

        A retryable status is returned with ``exhausted`` set; a transport
        error becomes ``ServerUnavailableError`` (raised from ``exc``).
        """
        elapsed = time.monotonic() - self.started
        if isinstance(exc, RetryableStatus):
            return Outcome(exc.response, self.attempts, elapsed, True)
        raise ServerUnavailableError(
            f"could not reach the server after {self.attempts} attempts over {elapsed:.1f}s "
            f"({type(exc).__name__}: {exc or 'no detail'}) while sending {self.what}",
            **self.context) from exc


def send(
    request: Callable[[], httpx.Response],
    policy: RetryPolicy,
    budget: float | None,
    *,
    what: str,
    context: dict | None = None,
) -> Outcome:
    """Call ``request`` until it gives an answer the policy does not retry.

    Returns the final answer (success or a fatal status), or the last
    retryable one with ``exhausted`` set. Retryable transport errors that
    outlast the budget become ``ServerUnavailableError``; other exceptions
    propagate unchanged.
    """
    tries = _Tries(policy, what, context)
    try:
        return Retrying(**_tenacity_args(policy, budget, what))(tries.attempt, request)
    except (RetryableStatus, *policy.transport_errors) as exc:
        return tries.ended(exc)


async def send_async(
    request: Callable[[], Awaitable[httpx.Response]],
    policy: RetryPolicy,
    budget: float | None,
    *,
    what: str,
    context: dict | None = None,
) -> Outcome:
    """``send`` for coroutines: the waits use ``asyncio.sleep``."""
    tries = _Tries(policy, what, context)
    try:
        return await AsyncRetrying(**_tenacity_args(policy, budget, what))(
            tries.attempt_async, request)
    except (RetryableStatus, *policy.transport_errors) as exc:
        return tries.ended(exc)
