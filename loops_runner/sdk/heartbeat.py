"""Keep-alive: ping the trainer's ``/health`` while a training client is open.

An idle trainer scales down; long sampling or evaluation phases send no
training operations, so a daemon thread pings every 60 s (spec 2.4). 4xx
answers are ignored (not-ready states), 5xx and transport errors are counted,
and after 20 consecutive failures the heartbeat gives up with a warning.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref

import httpx

from loops_runner.sdk.http import make_client

logger = logging.getLogger("loops_runner.sdk")

INTERVAL = 60.0
PING_TIMEOUT = 30.0
WARN_AFTER = 5
GIVE_UP_AFTER = 20


class _Pinger:
    """The thread's side; owners hold a ``Heartbeat`` so a dropped client stops it."""

    def __init__(self, client: httpx.Client, url: str, interval: float) -> None:
        self.client = client
        self.url = url
        self.interval = interval
        self.stopped = threading.Event()
        self.pings = 0
        self.thread = threading.Thread(target=self.run, name="loops-heartbeat", daemon=True)

    def run(self) -> None:
        failures = 0
        last_success = time.monotonic()
        while not self.stopped.wait(self.interval):
            try:
                response = self.client.get(self.url, timeout=PING_TIMEOUT)
                self.pings += 1
                if response.status_code >= 500:
                    raise RuntimeError(f"HTTP {response.status_code}")
            except Exception as exc:  # never let a ping kill the thread noisily
                if self.stopped.is_set():
                    return
                failures += 1
                level = logging.WARNING if failures == WARN_AFTER else logging.DEBUG
                since = time.monotonic() - last_success
                if failures >= GIVE_UP_AFTER:
                    logger.warning("heartbeat to %s gave up after %d failures (last success "
                                   "%.0fs ago): %r; an idle trainer may shut down",
                                   self.url, failures, since, exc)
                    return
                logger.log(level, "heartbeat to %s failed %d times in a row: %r",
                           self.url, failures, exc)
                continue
            failures = 0
            last_success = time.monotonic()

    def stop(self) -> None:
        self.stopped.set()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout=1.0)
        self.client.close()


class Heartbeat:
    """Start/stop handle; stopping is idempotent and also happens when it is collected."""

    def __init__(self, url: str, headers: dict[str, str], interval: float = INTERVAL) -> None:
        # Its own connection: a ping must not queue behind pipelined long-polls.
        client = make_client(headers=headers, timeout=PING_TIMEOUT,
                             limits=httpx.Limits(max_connections=1,
                                                 max_keepalive_connections=1))
        self._pinger = _Pinger(client, url, interval)
        self._finalizer = weakref.finalize(self, self._pinger.stop)

    @property
    def pings(self) -> int:
        return self._pinger.pings

    def start(self) -> None:
        self._pinger.thread.start()

    def stop(self) -> None:
        self._finalizer()
