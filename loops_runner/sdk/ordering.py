"""Per-client issue order: a turnstile of numbered tickets (spec 4.2).

Each operation takes a ticket when it is called (ticket ``t`` becomes
``seq_id = t + 1``). Its submit may start only when every earlier ticket has
been released, i.e. accepted by the server or given up; so the server accepts
one client's operations in the order they were issued, even when they are
issued from several threads or asyncio tasks at once.

A chunked ``forward_backward`` takes a contiguous range of tickets and
releases it as a whole once every chunk was accepted. A ticket released out of
order (its caller was cancelled while waiting) is skipped when its turn comes.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager


class Turnstile:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._issued = 0
        self._serving = 0  # every ticket below this one has been released
        self._released: set[int] = set()
        self._async_waiters: dict[int, list[tuple[asyncio.AbstractEventLoop, asyncio.Future]]]
        self._async_waiters = {}

    def take(self, count: int = 1) -> range:
        """Reserve ``count`` consecutive tickets, in call order."""
        if count < 1:
            raise ValueError("count must be >= 1")
        with self._cond:
            start = self._issued
            self._issued += count
            return range(start, start + count)

    def _is_turn(self, ticket: int) -> bool:
        return self._serving >= ticket

    def wait(self, ticket: int) -> None:
        """Block until every ticket before ``ticket`` was released."""
        with self._cond:
            self._cond.wait_for(lambda: self._is_turn(ticket))

    async def wait_async(self, ticket: int) -> None:
        """``wait`` without blocking the event loop."""
        with self._cond:
            if self._is_turn(ticket):
                return
            loop = asyncio.get_running_loop()
            waiter = loop.create_future()
            self._async_waiters.setdefault(ticket, []).append((loop, waiter))
        await waiter

    def release(self, tickets: range) -> None:
        """Mark ``tickets`` as done; let the next holders through."""
        with self._cond:
            # Releasing twice is harmless: tickets already passed are ignored.
            self._released.update(t for t in tickets if t >= self._serving)
            while self._serving in self._released:
                self._released.discard(self._serving)
                self._serving += 1
            self._cond.notify_all()
            due = [ticket for ticket in self._async_waiters if self._is_turn(ticket)]
            for ticket in due:
                for loop, waiter in self._async_waiters.pop(ticket):
                    loop.call_soon_threadsafe(_wake, waiter)

    @contextmanager
    def turn(self, tickets: range) -> Iterator[None]:
        try:
            self.wait(tickets.start)
            yield
        finally:
            self.release(tickets)

    @asynccontextmanager
    async def turn_async(self, tickets: range) -> AsyncIterator[None]:
        try:
            await self.wait_async(tickets.start)
            yield
        finally:
            self.release(tickets)


def _wake(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)
