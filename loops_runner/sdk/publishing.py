"""Waiting until the paired sampler serves a published version (spec 7.5).

After a ``bump_version`` publish the sampler hot-swaps to the new adapter and
then reports it on ``GET /trainers_policy_version``. Any failure there is
retried (the sampler may be swapping or restarting) until the wait's budget
runs out; polls start fast and back off to 2 s.
"""

from __future__ import annotations

import asyncio
import time

import httpx

from loops_runner.sdk.errors import OperationTimeoutError
from loops_runner.sdk.http import make_async_client, make_client

WAIT = 600.0
FIRST_PAUSE = 0.1
MAX_PAUSE = 2.0


def _answer(response: httpx.Response, target: int) -> str:
    """``"ready"`` once the reported version reaches ``target``; else what was seen."""
    if response.status_code != 200:
        return f"HTTP {response.status_code}"
    try:
        version = int(response.json()["policy_version"])
    except (ValueError, KeyError, TypeError):
        return f"unreadable body {response.text[:100]!r}"
    return "ready" if version >= target else f"version {version}"


class _Wait:
    """The deadline and backoff of one wait, shared by its sync and async poll loops."""

    def __init__(self, target: int, run_id: str | None) -> None:
        self.target = target
        self.run_id = run_id
        self.deadline = time.monotonic() + WAIT
        self.pause = FIRST_PAUSE

    def after(self, last: str) -> float | None:
        """How long to sleep after the answer ``last``: None once it is ``"ready"``.

        Raises ``OperationTimeoutError`` when that sleep would end past the deadline.
        """
        if last == "ready":
            return None
        pause = self.pause
        if time.monotonic() + pause > self.deadline:
            raise OperationTimeoutError(
                f"the paired sampler did not reach version {self.target} within {WAIT:.0f}s "
                f"(last answer: {last})", run_id=self.run_id, operation="wait_for_sampler")
        self.pause = min(pause * 2, MAX_PAUSE)
        return pause


def _poll(client: httpx.Client, url: str, target: int) -> str:
    try:
        return _answer(client.get(url), target)
    except httpx.TransportError as exc:
        return repr(exc)


async def _poll_async(client: httpx.AsyncClient, url: str, target: int) -> str:
    try:
        return _answer(await client.get(url), target)
    except httpx.TransportError as exc:
        return repr(exc)


def wait_for_version(sampler_url: str, headers: dict[str, str], target: int,
                     run_id: str | None) -> None:
    url = f"{sampler_url}/trainers_policy_version"
    wait = _Wait(target, run_id)
    with make_client(headers=headers, timeout=10.0) as client:
        while (pause := wait.after(_poll(client, url, target))) is not None:
            time.sleep(pause)


async def wait_for_version_async(sampler_url: str, headers: dict[str, str], target: int,
                                 run_id: str | None) -> None:
    url = f"{sampler_url}/trainers_policy_version"
    wait = _Wait(target, run_id)
    async with make_async_client(headers=headers, timeout=10.0) as client:
        while (pause := wait.after(await _poll_async(client, url, target))) is not None:
            await asyncio.sleep(pause)
