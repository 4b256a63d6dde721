"""Exceptions of the Loops client.

Every exception says which run and which operation it concerns, so a failure
deep inside a pipelined training loop can be traced to the call that caused
it. The names users already catch with the Baseten SDK (``RemoteOpError``,
``UnknownRequestError``, ``ServerShutdownError``, ``SampleTimeoutError``) keep
their meaning; an HTTP rejection is also an ``httpx.HTTPStatusError`` so code
catching that keeps working.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from loops_runner.sdk.deployment_kinds import Operation


def describe(operation: str | None, run_id: str | None, operation_id: str | None) -> str:
    """``forward_backward (run r-1, operation 3f2a…)``: who failed, for messages."""
    parts = []
    if run_id:
        parts.append(f"run {run_id}")
    if operation_id:
        parts.append(f"operation {operation_id}")
    name = operation or "request"
    return f"{name} ({', '.join(parts)})" if parts else name


class LoopsError(Exception):
    """Base class of the client's errors; carries the failed call's context."""

    def __init__(
        self,
        message: str = "",
        *,
        run_id: str | None = None,
        operation: str | None = None,
        operation_id: str | None = None,
    ) -> None:
        self.detail = message
        self.run_id = run_id
        self.operation = operation
        self.operation_id = operation_id
        # Exception.__init__ directly: subclasses also derive from httpx or
        # builtin classes whose __init__ takes other arguments.
        Exception.__init__(self, f"{describe(operation, run_id, operation_id)}: {message}")

    @property
    def context(self) -> dict[str, str]:
        fields = {"run_id": self.run_id, "operation": self.operation,
                  "operation_id": self.operation_id}
        return {key: value for key, value in fields.items() if value is not None}

    def __reduce__(self):
        # Rebuilt without calling __init__ (subclasses take other arguments);
        # pickle then restores the attributes from __dict__.
        return (_rebuild, (type(self), self.args), self.__dict__)


def _rebuild(cls: type[LoopsError], args: tuple[object, ...]) -> LoopsError:
    error = cls.__new__(cls)
    error.args = args
    return error


class RemoteOpError(LoopsError):
    """The server ran the operation and it failed (``status: error`` on poll).

    ``error_class`` is the server's short class name (e.g. ``ValueError``);
    ``descriptor`` the failed ``Operation`` (its id, name and client context),
    as in the Baseten SDK.
    """

    def __init__(self, message: str, error_class: str | None = None, *,
                 operation: Operation | str | None = None, **context: str | None):
        self.error_class = error_class
        prefix = f"{error_class}: " if error_class else ""
        if operation is not None and not isinstance(operation, str):
            # The Baseten SDK's form: operation=<the failed Operation>.
            context = {"run_id": getattr(operation.client, "run_id", None),
                       "operation_id": operation.operation_id, **context}
            operation = operation.name
        super().__init__(f"{prefix}{message}", operation=operation, **context)

    @property
    def descriptor(self) -> Operation:
        # Built from the stored context, so the identity is kept once.
        from loops_runner.sdk.deployment_kinds import Operation, TrainerOperationContext

        return Operation(self.operation_id or "unknown", self.operation or "request",
                         TrainerOperationContext(run_id=self.run_id))


class UnknownRequestError(LoopsError):
    """The server has no record of the operation (404 on poll).

    Either it never saw it (a restarted or different server) or the result
    was evicted. The client does not resubmit on its own: resubmit if the work
    is still wanted.
    """


class ServerShutdownError(LoopsError):
    """The server answered 503: it is shutting down. Retry against a fresh one."""


class SampleTimeoutError(LoopsError, TimeoutError):
    """A ``/sample`` response did not arrive within the client's read timeout.

    Not retried automatically: the sampler may still be generating, and a
    retry would pay for the generation twice. ``timeout`` is that read timeout.
    """

    def __init__(self, message: str | float | None = None, *, timeout: float | None = None,
                 **context: str | None) -> None:
        if not isinstance(message, str):
            # The Baseten SDK's form: SampleTimeoutError(timeout).
            timeout = message if timeout is None else timeout
            message = (f"no response within the client's read timeout of {timeout}s; the "
                       "sampler may still be generating")
        self.timeout = timeout
        super().__init__(message, **context)


class DeploymentTerminatedError(LoopsError, RuntimeError):
    """A deployment reached a terminal state; ``deployment_id`` and ``status`` say which."""

    def __init__(self, message: str, *args: str, deployment_id: str | None = None,
                 status: str | None = None, **context: str | None) -> None:
        if args:
            # The Baseten SDK's form: (deployment_id, status), the message made here.
            if len(args) > 1 or deployment_id is not None or status is not None:
                raise TypeError(f"{type(self).__name__} takes (deployment_id, status) or "
                                "(message, *, deployment_id=, status=)")
            deployment_id, status = message, args[0]
            message = (f"deployment {deployment_id} entered the terminal state {status!r}; "
                       "it will not become ready")
        self.deployment_id = deployment_id
        self.status = status
        super().__init__(message, **context)


class SamplerTerminatedError(DeploymentTerminatedError):
    """The sampler's deployment reached a terminal state; it will not serve."""


class TrainerTerminatedError(DeploymentTerminatedError):
    """The trainer's deployment ended (FAILED, STOPPED, PREEMPTED) while a client waited.

    A ``RuntimeError``, as in the Baseten SDK.
    """


class OperationTimeoutError(LoopsError, TimeoutError):
    """Waiting for an operation's outcome exceeded the caller's budget.

    The operation may still finish on the server; calling ``result()`` again
    keeps waiting for it.
    """


class ServerUnavailableError(LoopsError, ConnectionError):
    """The server could not be reached for longer than the call's budget."""


class UnsupportedOperationError(LoopsError, RuntimeError):
    """The call needs something this client does not have (a run, a control plane).

    Raised before anything is sent, e.g. ``save_state`` on a
    ``ServiceClient.local(...)`` client.
    """


class RequestRejectedError(LoopsError, httpx.HTTPStatusError):
    """The server refused the request with an HTTP error status.

    ``status_code``, ``reason`` (``details.reason`` of the body) and
    ``gateway_code`` (``X-Baseten-Error-Code`` of a gateway rejection) say why;
    the message carries the server's own text.
    """

    def __init__(
        self,
        message: str,
        *,
        request: httpx.Request,
        response: httpx.Response,
        reason: str | None = None,
        gateway_code: str | None = None,
        **context: str | None,
    ) -> None:
        LoopsError.__init__(self, message, **context)
        self.request = request
        self.response = response
        self.reason = reason
        self.gateway_code = gateway_code

    @property
    def status_code(self) -> int:
        return self.response.status_code


# Outcomes that will not change if the caller asks again: a future caches
# them. Timeouts, lost connections and cancellations are not final.
FINAL_ERRORS: tuple[type[BaseException], ...] = (
    RemoteOpError,
    UnknownRequestError,
    ServerShutdownError,
    RequestRejectedError,
    UnsupportedOperationError,
)


def is_final(exc: BaseException) -> bool:
    """Whether a future should remember ``exc`` instead of trying again later."""
    if isinstance(exc, FINAL_ERRORS):
        return True
    # Anything else that is not about time or transport (a malformed result,
    # a client-side ValueError) is final as well.
    return isinstance(exc, Exception) and not isinstance(
        exc, TimeoutError | ConnectionError | httpx.TransportError
    )
