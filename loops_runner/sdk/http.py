"""HTTP plumbing shared by the clients: headers, error bodies, httpx clients.

Headers follow spec 2.1: every request names the client (``User-Agent``) and
opts in to the gateway's error-source headers (``X-Baseten-Accept-Error``);
``Authorization: Api-Key`` only when a key is configured. Error bodies are
read per spec 2.2, and the three "never retry" signals are recognised here.
"""

from __future__ import annotations

import asyncio
import functools
import json
import ssl
import threading
import weakref
from typing import Any

import httpx

from loops_runner import __version__
from loops_runner.sdk.errors import RequestRejectedError

# The names are defined once, in the wire package, and used here by the client.
from loops_runner.wire.headers import (  # noqa: F401  (re-exported for the client modules)
    ACCEPT_ERROR_HEADER,
    AFFINITY_HEADER,
    CHECKPOINT_PATH_HEADER,
    DEACTIVATED_MODEL_CODE,
    DEACTIVATED_MODEL_SOURCE,
    ERROR_CODE_HEADER,
    ERROR_SOURCE_HEADER,
    GATEWAY_ERROR_SOURCE,
    IDEMPOTENCY_KEY_HEADER,
    MIN_POLICY_VERSION_HEADER,
    POLICY_VERSION_RESPONSE_HEADER,
    RUN_ID_HEADER,
    SAMPLER_ID_HEADER,
)

USER_AGENT = f"loops-runner/{__version__}"


def base_headers(api_key: str | None) -> dict[str, str]:
    """Identity headers of every client request, plus auth when a key is set."""
    headers = {"User-Agent": USER_AGENT, ACCEPT_ERROR_HEADER: "1"}
    if api_key:
        headers["Authorization"] = f"Api-Key {api_key}"
    return headers


# -- error bodies (spec 2.2) ---------------------------------------------------


def _json_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError):
        return None


def error_detail(response: httpx.Response) -> str | None:
    """The human message of an error body: ``detail``/``error``/``message``, else the text."""
    if not response.content:
        return None
    payload = _json_body(response)
    if payload is None:
        text = response.text.strip()
        return text or None
    if isinstance(payload, dict):
        for key in ("detail", "error", "message"):
            value = payload.get(key)
            if isinstance(value, str) and value.strip():
                return value
        # A vLLM body nests its message: {"error": {"type": ..., "message": ...}}.
        nested = payload.get("error")
        if isinstance(nested, dict) and isinstance(nested.get("message"), str):
            return str(nested["message"])
    return json.dumps(payload, default=str)


def error_reason(response: httpx.Response) -> str | None:
    """``details.reason`` of an error body (e.g. ``NOT_PRESIGNABLE``)."""
    if not response.is_error:
        return None
    payload = _json_body(response)
    details = payload.get("details") if isinstance(payload, dict) else None
    reason = details.get("reason") if isinstance(details, dict) else None
    return reason if isinstance(reason, str) else None


def is_gateway_rejection(response: httpx.Response) -> bool:
    """A 4xx the Loops gateway marked as its own: retrying cannot change it."""
    return (400 <= response.status_code < 500
            and response.headers.get(ERROR_SOURCE_HEADER) == GATEWAY_ERROR_SOURCE)


def is_deactivated_model(response: httpx.Response) -> bool:
    return (response.headers.get(ERROR_SOURCE_HEADER) == DEACTIVATED_MODEL_SOURCE
            and response.headers.get(ERROR_CODE_HEADER) == DEACTIVATED_MODEL_CODE)


def is_vllm_invalid_request(response: httpx.Response) -> bool:
    """A 400 whose body says ``BadRequestError`` (top level or under ``error``)."""
    if response.status_code != 400:
        return False
    payload = _json_body(response)
    if not isinstance(payload, dict):
        return False
    error = payload.get("error")
    inner = error if isinstance(error, dict) else payload
    return inner.get("type") == "BadRequestError"


def is_permanent_rejection(response: httpx.Response) -> bool:
    """Statuses that usually mean "not ready", but here say "never": fail at once."""
    return (is_gateway_rejection(response) or is_deactivated_model(response)
            or is_vllm_invalid_request(response))


def rejection(
    response: httpx.Response,
    *,
    note: str | None = None,
    run_id: str | None = None,
    operation: str | None = None,
    operation_id: str | None = None,
) -> RequestRejectedError:
    """A ``RequestRejectedError`` carrying the server's own message for ``response``."""
    request = response.request
    message = f"HTTP {response.status_code} from {request.method} {request.url}"
    gateway_code = None
    if is_gateway_rejection(response):
        gateway_code = response.headers.get(ERROR_CODE_HEADER)
        message += f" (Loops gateway: {gateway_code})"
    detail = error_detail(response)
    if detail:
        message += f": {detail}"
    if note:
        message += f" [{note}]"
    return RequestRejectedError(
        message, request=request, response=response, reason=error_reason(response),
        gateway_code=gateway_code, run_id=run_id, operation=operation,
        operation_id=operation_id,
    )


def raise_for_status(response: httpx.Response, **context: Any) -> None:
    if response.is_error:
        raise rejection(response, **context)


# -- clients -------------------------------------------------------------------


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The TLS settings every httpx client of this process shares.

    httpx builds them for each new client by reading the whole CA bundle: tens
    of milliseconds (over 100 on a busy machine), three times per publish (the
    trainer's notify, the wait for the version, the new SamplingClient). Built
    once here, with httpx's own defaults (``SSL_CERT_FILE``/``SSL_CERT_DIR`` or
    certifi), an ``httpx.Client(verify=tls_context())`` costs a few ms.
    """
    return httpx.create_ssl_context()


def make_client(
    *,
    headers: dict[str, str] | None = None,
    timeout: httpx.Timeout | float | None = 60.0,
    limits: httpx.Limits | None = None,
    follow_redirects: bool = False,
) -> httpx.Client:
    return httpx.Client(headers=headers, timeout=timeout, limits=limits or httpx.Limits(),
                        follow_redirects=follow_redirects, verify=tls_context())


def make_async_client(**kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(verify=tls_context(), **kwargs)


class AsyncClients:
    """One ``httpx.AsyncClient`` per event loop, made on first use in that loop.

    An AsyncClient binds to the loop it first runs in, and users may drive one
    client from several ``asyncio.run`` calls, so each loop gets its own.
    """

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._lock = threading.Lock()
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient]
        self._clients = weakref.WeakKeyDictionary()

    def get(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._clients.get(loop)
            if client is None or client.is_closed:
                client = make_async_client(follow_redirects=False, **self._kwargs)
                self._clients[loop] = client
            return client

    async def aclose_current(self) -> None:
        """Close this loop's client (the others are dropped with their loops)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._clients.pop(loop, None)
        if client is not None:
            await client.aclose()
