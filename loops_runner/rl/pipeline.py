"""Rollouts ahead of training: synchronous (k = 0) or off-policy by up to k versions.

A background thread with its own event loop samples the batch of step ``i`` as
soon as at least ``i - k`` optimizer steps are published, always from the latest
published policy. With ``k = 0`` that is the classic loop (sample, train,
publish, sample...); with ``k >= 1`` the next batches are sampled while the
current one trains. The trainer's importance ratio uses the sampler's own
logprobs, so a batch sampled a version or two behind still gets a correct
gradient. A batch is never more than ``k`` versions old when its step trains: it
was sampled after step ``i - k`` was published, and the sampler's
``X-Min-Policy-Version`` floor keeps it from serving older weights.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from loops_runner.rl.rollouts import RolloutBatch

SampleBatch = Callable[[int, Any], Awaitable[RolloutBatch]]


class RolloutPipeline:
    """Yields the rollout batch of each step, sampled up to ``max_ahead`` steps early."""

    def __init__(self, sample_batch: SampleBatch, policy: Any, *, first_step: int,
                 last_step: int, max_ahead: int) -> None:
        self._sample_batch = sample_batch
        self._policy = policy
        self._published_steps = first_step  # optimizer steps whose weights are published
        self._max_ahead = max_ahead
        self._next = first_step
        self._last = last_step
        self._ready: queue.Queue[tuple[int, RolloutBatch | BaseException]] = queue.Queue()
        self._changed = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="rl-rollouts", daemon=True)
        self._thread.start()

    def publish(self, policy: Any, steps_done: int) -> None:
        """The weights after ``steps_done`` optimizer steps are live: sample from them."""
        with self._changed:
            self._policy = policy
            self._published_steps = steps_done
            self._changed.notify_all()

    def next_batch(self) -> RolloutBatch:
        """The next step's batch (blocks until it is sampled); sampling errors re-raise."""
        _, item = self._ready.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        self._thread.join(timeout=60)

    # -- the sampling thread ---------------------------------------------------------

    def _wait_for_turn(self) -> tuple[int, Any] | None:
        with self._changed:
            while True:
                if self._stopping:
                    return None
                if self._next < self._last and \
                        self._next - self._published_steps <= self._max_ahead:
                    step = self._next
                    self._next += 1
                    return step, self._policy
                self._changed.wait()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            while (turn := self._wait_for_turn()) is not None:
                step, policy = turn
                try:
                    batch: RolloutBatch | BaseException = loop.run_until_complete(
                        self._sample_batch(step, policy))
                except BaseException as error:  # handed to the training loop
                    batch = error
                self._ready.put((step, batch))
        finally:
            loop.close()
