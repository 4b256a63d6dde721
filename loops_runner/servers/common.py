"""Pieces every server shares: the invalid-request error, error bodies, the listening socket,
the URL line."""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from typing import Any

from fastapi.responses import JSONResponse

from loops_runner.servers.launch import URL_LINE_PREFIX
from loops_runner.wire.errors import ErrorBody, ErrorDetails, VllmError, VllmErrorBody
from loops_runner.wire.headers import ERROR_CODE_HEADER, ERROR_SOURCE_HEADER, GATEWAY_ERROR_SOURCE

GATEWAY_SOURCE_HEADER = ERROR_SOURCE_HEADER
GATEWAY_CODE_HEADER = ERROR_CODE_HEADER


class Refusal(Exception):
    """A request refused before it changes any state, answered ``status`` with the
    error shape of spec 2.2 (``detail`` and ``details.reason``).

    The one refusal type of every server: the control plane's route checks, the
    trainer's operation submits (raised by ``prepare``, so nothing is accepted)
    and request validation all raise it.
    """

    def __init__(self, status: int, detail: str, reason: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.reason = reason
        self.headers = headers

    def response(self) -> JSONResponse:
        return error_response(self.status, self.detail, self.reason, self.headers)


class InvalidRequest(Refusal, ValueError):
    """A request that can never succeed: the message names the field and the limit.

    The trainer answers it 422 with the error shape of spec 2.2, the sampler a
    vLLM-style 400 (``param`` names the offending field there); a client
    retries neither.
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(422, message, "INVALID_REQUEST")
        self.param = param


def error_response(
    status: int,
    detail: str,
    reason: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The trainer/control-plane error shape of spec 2.2."""
    body = ErrorBody(detail=detail, details=ErrorDetails(reason=reason) if reason else None)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


def gateway_rejection(status: int, detail: str, code: str) -> JSONResponse:
    """A 4xx the SDK treats as final at once (``X-Baseten-Error-Source: 06``)."""
    return error_response(
        status, detail, reason=code.upper(),
        headers={GATEWAY_SOURCE_HEADER: GATEWAY_ERROR_SOURCE, GATEWAY_CODE_HEADER: code},
    )


def vllm_bad_request(message: str, param: str | None = None) -> JSONResponse:
    """The sampler's invalid-request answer: 400 with a vLLM-style body (never retried)."""
    body = VllmErrorBody(error=VllmError(message=message, param=param))
    return JSONResponse(body.model_dump(), status_code=400)


def format_validation_errors(errors: list[dict[str, Any]]) -> str:
    """Pydantic errors as one line each: ``data.0.loss_fn_inputs.weights: message``."""
    lines = []
    for error in errors:
        location = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        lines.append(f"{location or 'body'}: {error.get('msg', 'invalid')}")
    return "; ".join(lines)


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before starting uvicorn so ``port=0`` yields a known, free port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP explicitly: asyncio sets TCP_NODELAY on accepted
    # connections only when it does, and without it every response on a
    # kept-alive connection stalls ~40 ms (Nagle against delayed ACKs).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def server_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def serve_app(
    app: Any,
    host: str,
    port: int,
    *,
    log_level: str = "warning",
    graceful_timeout: float | None = None,
    on_exit: Any = None,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Run ``app`` with uvicorn on ``host:port`` and announce the URL on stdout.

    The app is wrapped in ``ActivityTracker`` (``GET /internal/activity``) so
    the control plane can tell an idle server from a busy one.
    ``graceful_timeout`` bounds how long shutdown waits for open requests.
    ``on_exit`` (a no-argument callable) runs when the exit signal arrives,
    before uvicorn waits for open requests (e.g. to release held long-polls).
    ``announce(url)`` runs once the server accepts connections, after the URL line.
    """
    import uvicorn

    from loops_runner.servers.activity import ActivityTracker

    sock = bind_socket(host, port)
    url = server_url(sock)
    # httptools, not uvicorn's pure-Python h11: the event loop shares the
    # interpreter lock with the sampler's engine thread, and h11's per-write
    # bookkeeping cost 32 streams a measurable share of the engine's throughput
    # (docs/performance.md, streaming). Named here so a missing install fails
    # loudly instead of falling back silently ("auto").
    config = uvicorn.Config(ActivityTracker(app), log_level=log_level, timeout_keep_alive=75,
                            access_log=False, timeout_graceful_shutdown=graceful_timeout,
                            http="httptools")
    server = uvicorn.Server(config)
    app.state.public_url = url

    original_startup = server.startup

    async def startup_then_announce(sockets: Any = None) -> None:
        await original_startup(sockets=sockets)
        print(f"{URL_LINE_PREFIX}{url}", flush=True)
        sys.stdout.flush()
        if announce is not None and not server.should_exit:
            announce(url)

    server.startup = startup_then_announce  # type: ignore[method-assign]

    if on_exit is not None:
        original_handle_exit = server.handle_exit

        def handle_exit_then_hook(sig: int, frame: Any) -> None:
            on_exit()
            original_handle_exit(sig, frame)

        server.handle_exit = handle_exit_then_hook  # type: ignore[method-assign]
    server.run(sockets=[sock])
