"""Futures of accepted operations.

The submit already happened when a future exists (so a refused request raised
at the call); the outcome is fetched lazily, by ``.result()`` (blocking) or
``await future``. The first final outcome is cached, success or error, and
replayed to every later caller. Timeouts and lost connections are not final:
asking again keeps waiting. ``done()`` only reports what is known locally and
makes no network call.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Sequence
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel

from loops_runner.sdk.errors import OperationTimeoutError, UnsupportedOperationError, is_final
from loops_runner.sdk.operation_protocol import OperationRef, TrainerConnection

T = TypeVar("T")
U = TypeVar("U")
R = TypeVar("R", bound=BaseModel)

_UNSET: Any = object()


class _CachedFuture(Generic[T]):
    """Caching, locking and the sync/async surface; subclasses say how to resolve."""

    def __init__(self) -> None:
        self._resolve_lock = threading.Lock()  # one blocking resolver at a time
        self._state_lock = threading.Lock()  # short: guards the cached outcome
        self._value: T = _UNSET
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[T], None]] = []

    # -- subclass API --------------------------------------------------------------

    def _resolve(self, timeout: float | None) -> T:
        raise NotImplementedError

    async def _resolve_async(self, timeout: float | None) -> T:
        raise NotImplementedError

    # -- public API ----------------------------------------------------------------

    def done(self) -> bool:
        """True once the outcome is known locally (no network call)."""
        return self._value is not _UNSET or self._error is not None

    def result(self, timeout: float | None = None) -> T:
        """Wait for the outcome and return it (or raise its error).

        ``timeout`` (seconds) bounds this wait only; when it passes an
        ``OperationTimeoutError`` (a ``TimeoutError``) is raised and the
        operation keeps running: call ``result`` again to keep waiting.
        """
        if self.done():
            return self._replay()
        started = time.monotonic()
        # Another thread may be waiting for the same outcome: wait behind it,
        # but never longer than this caller's own timeout.
        if not self._resolve_lock.acquire(timeout=-1 if timeout is None else timeout):
            raise self._timed_out(timeout)
        try:
            if self.done():
                return self._replay()
            remaining = None if timeout is None else \
                max(0.0, timeout - (time.monotonic() - started))
            try:
                value = self._resolve(remaining)
            except BaseException as exc:
                self._fail(exc)
                raise
            return self._succeed(value)
        finally:
            self._resolve_lock.release()

    async def result_async(self, timeout: float | None = None) -> T:
        """``result`` without blocking the event loop."""
        if self.done():
            return self._replay()
        try:
            value = await self._resolve_async(timeout)
        except BaseException as exc:
            self._fail(exc)
            raise
        return self._succeed(value)

    def __await__(self) -> Generator[Any, None, T]:
        return self.result_async().__await__()

    def add_done_callback(self, callback: Callable[[T], None]) -> None:
        """Run ``callback(value)`` once, when a successful outcome is first known."""
        with self._state_lock:
            if self._value is _UNSET:
                self._callbacks.append(callback)
                return
            value = self._value
        callback(value)

    # -- internals -----------------------------------------------------------------

    def _timed_out(self, timeout: float | None) -> BaseException:
        return OperationTimeoutError(f"no outcome within {timeout}s (another caller is "
                                     "waiting for it); call result() again to keep waiting",
                                     operation=getattr(self, "operation", None),
                                     operation_id=getattr(self, "operation_id", None) or None)

    def _replay(self) -> T:
        if self._error is not None:
            raise self._error
        return self._value

    def _fail(self, exc: BaseException) -> None:
        if not is_final(exc):
            return
        with self._state_lock:
            if not self.done():
                self._error = exc

    def _succeed(self, value: T) -> T:
        with self._state_lock:
            if self.done():  # another resolver was first: keep one outcome
                return self._replay()
            self._value = value
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(value)
        return value


class APIFuture(_CachedFuture[R]):
    """The future of one trainer operation (``forward_backward``, ``optim_step``, ...)."""

    def __init__(self, connection: TrainerConnection, ref: OperationRef,
                 result_type: type[R]) -> None:
        super().__init__()
        self._connection = connection
        self._ref = ref
        self._result_type = result_type

    @property
    def operation_id(self) -> str:
        return self._ref.operation_id

    @property
    def operation(self) -> str:
        return self._ref.name

    def _budget(self, timeout: float | None) -> float | None:
        return timeout if timeout is not None else self._connection.ready_timeout

    def _check_open(self) -> None:
        if self._connection.closed:
            raise UnsupportedOperationError("the training client is closed",
                                            **self._ref.context)

    def _resolve(self, timeout: float | None) -> R:
        self._check_open()
        return self._connection.poll(self._ref, self._result_type, self._budget(timeout))

    async def _resolve_async(self, timeout: float | None) -> R:
        self._check_open()
        return await self._connection.poll_async(self._ref, self._result_type,
                                                 self._budget(timeout))

    def __repr__(self) -> str:
        state = "done" if self.done() else "pending"
        return f"<APIFuture {self._ref.name} {self._ref.operation_id} {state}>"


class MappedFuture(_CachedFuture[U]):
    """An inner future's value passed through ``fn`` (once, when it resolves).

    ``async_fn``, when given, replaces ``fn`` on the awaited path (for steps
    that wait on the network themselves).
    """

    def __init__(self, inner: _CachedFuture[T], fn: Callable[[T], U],
                 async_fn: Callable[[T], Awaitable[U]] | None = None) -> None:
        super().__init__()
        self._inner = inner
        self._fn = fn
        self._async_fn = async_fn

    @property
    def operation_id(self) -> str:
        return getattr(self._inner, "operation_id", "")

    def _resolve(self, timeout: float | None) -> U:
        return self._fn(self._inner.result(timeout))

    async def _resolve_async(self, timeout: float | None) -> U:
        value = await self._inner.result_async(timeout)
        if self._async_fn is not None:
            return await self._async_fn(value)
        return self._fn(value)


class GatheredFuture(_CachedFuture[U]):
    """Several futures combined into one value (the chunks of one forward_backward)."""

    def __init__(self, inners: Sequence[_CachedFuture[T]],
                 combine: Callable[[list[T]], U]) -> None:
        if not inners:
            raise ValueError("GatheredFuture needs at least one inner future")
        super().__init__()
        self._inners = list(inners)
        self._combine = combine

    @property
    def operation_id(self) -> str:
        return getattr(self._inners[0], "operation_id", "")

    @property
    def operation_ids(self) -> list[str]:
        return [getattr(inner, "operation_id", "") for inner in self._inners]

    def _resolve(self, timeout: float | None) -> U:
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        values = []
        for inner in self._inners:
            remaining = None if timeout is None else max(0.0, deadline - time.monotonic())
            values.append(inner.result(remaining))
        return self._combine(values)

    async def _resolve_async(self, timeout: float | None) -> U:
        values = await asyncio.gather(*(inner.result_async(timeout) for inner in self._inners))
        return self._combine(list(values))


class ForwardBackwardFuture(Protocol):
    """What ``forward`` / ``forward_backward`` return, whether or not the data was split.

    The Baseten SDK's name for that surface, for type hints in ported scripts.
    """

    def result(self, timeout: float | None = None) -> Any: ...

    async def result_async(self, timeout: float | None = None) -> Any: ...

    def done(self) -> bool: ...

    def __await__(self) -> Generator[Any, None, Any]: ...
