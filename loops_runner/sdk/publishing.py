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


def _timeout(target: int, last: str, run_id: str | None) -> OperationTimeoutError:
    return OperationTimeoutError(
        f"the paired sampler did not reach version {target} within {WAIT:.0f}s "
        f"(last answer: {last})", run_id=run_id, operation="wait_for_sampler")


def wait_for_version(sampler_url: str, headers: dict[str, str], target: int,
                     run_id: str | None) -> None:
    url = f"{sampler_url}/trainers_policy_version"
    deadline = time.monotonic() + WAIT
    pause = FIRST_PAUSE
    with make_client(headers=headers, timeout=10.0) as client:
        while True:
            try:
                last = _answer(client.get(url), target)
            except httpx.TransportError as exc:
                last = repr(exc)
            if last == "ready":
                return
            if time.monotonic() + pause > deadline:
                raise _timeout(target, last, run_id)
            time.sleep(pause)
            pause = min(pause * 2, MAX_PAUSE)


async def wait_for_version_async(sampler_url: str, headers: dict[str, str], target: int,
                                 run_id: str | None) -> None:
    url = f"{sampler_url}/trainers_policy_version"
    deadline = time.monotonic() + WAIT
    pause = FIRST_PAUSE
    async with make_async_client(headers=headers, timeout=10.0) as client:
        while True:
            try:
                last = _answer(await client.get(url), target)
            except httpx.TransportError as exc:
                last = repr(exc)
            if last == "ready":
                return
            if time.monotonic() + pause > deadline:
                raise _timeout(target, last, run_id)
            await asyncio.sleep(pause)
            pause = min(pause * 2, MAX_PAUSE)
