"""Which failures the runner retries on its own (``resume.auto_retries``).

Retried: failures of the service, which a fresh attempt from the last
checkpoint can get past: a trainer or sampler process that died or restarted
(its runs and operations are gone), a control plane that restarted or could
not be reached (the local backend's clients first start its daemon again and
carry on; only what they cannot resend gets here), a server that stopped
answering. Never retried: a bad config or data file (a
``UserInputError``, also one phrased after a network error: an unreachable
dataset hub is not a service failure), a Ctrl-C, and errors of the recipe's own
code, which would only fail again.
"""

from __future__ import annotations

import httpx

from loops_runner.errors import UserInputError
from loops_runner.sdk.errors import LoopsError

RETRY_PAUSE_S = 2.0  # lets a supervisor notice the dead process before we provision again
_SERVICE_ERRORS: tuple[type[BaseException], ...] = (
    LoopsError, httpx.TransportError, ConnectionError, TimeoutError)


def is_recoverable(error: BaseException) -> bool:
    """True for a service failure, also when the recipe wrapped it in its own error."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, UserInputError | KeyboardInterrupt):
            return False
        if isinstance(current, _SERVICE_ERRORS):
            return True
        # `raise ... from None` hides the context on purpose: the error was rephrased.
        current = current.__cause__ or (None if current.__suppress_context__
                                        else current.__context__)
    return False


def describe(error: BaseException) -> str:
    """``ClassName: message`` on one line, short enough for the console."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}"
