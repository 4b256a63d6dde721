"""``*_async`` twins of blocking client methods, generated from the method itself.

A method whose work is blocking I/O gets its twin from ``in_thread``: the same
call, run in a worker thread, with the same signature and arguments, so the two
cannot drift apart. Twins that run natively on the event loop (``sample_async``,
``forward_backward_async``, ...) are written out beside their plain method and
run through the same test cases (tests/sdk/test_sdk_client_twins.py).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")
S = TypeVar("S")


def in_thread(method: Callable[Concatenate[S, P], T],
              ) -> Callable[Concatenate[S, P], Coroutine[Any, Any, T]]:
    """The ``async`` twin of ``method``: ``await``-able, same parameters, runs in a thread."""
    name = method.__name__

    @functools.wraps(method)
    async def twin(self: S, *args: P.args, **kwargs: P.kwargs) -> T:
        return await asyncio.to_thread(getattr(self, name), *args, **kwargs)

    twin.__name__ = f"{name}_async"
    twin.__qualname__ = f"{method.__qualname__}_async"
    twin.__doc__ = f"``{name}`` without blocking the event loop (it runs in a worker thread)."
    return twin
