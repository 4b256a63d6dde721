"""API-key check for the control plane.

With a key configured, every route needs ``Authorization: Api-Key <key>`` (what
the SDK sends) or ``Authorization: Bearer <key>``; the only exception is the
signed file route, because the SDK downloads those URLs with no headers and the
URL's own signature is the credential there.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from fastapi import Request, Response

from loops_runner.servers.common import error_response

FILES_PREFIX = "/files/"
_SCHEMES = ("api-key", "bearer")


def presented_key(authorization: str | None) -> str | None:
    """The key in an ``Api-Key``/``Bearer`` header (scheme case-insensitive), else None."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() not in _SCHEMES or not value.strip():
        return None
    return value.strip()


def key_matches(expected: str, authorization: str | None) -> bool:
    key = presented_key(authorization)
    # compare_digest on bytes: constant time whatever the key's characters.
    return key is not None and hmac.compare_digest(key.encode(), expected.encode())


def api_key_middleware(
    expected: str,
) -> Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]:
    async def check(request: Request,
                    call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.url.path.startswith(FILES_PREFIX):
            return await call_next(request)
        if not key_matches(expected, request.headers.get("authorization")):
            reason = ("missing" if request.headers.get("authorization") is None
                      else "invalid")
            return error_response(
                401,
                f"{reason} API key: send 'Authorization: Api-Key <key>' "
                "(or 'Bearer <key>') with the key this control plane was started with",
                "UNAUTHENTICATED",
                headers={"WWW-Authenticate": 'Api-Key realm="loops"'},
            )
        return await call_next(request)

    return check
