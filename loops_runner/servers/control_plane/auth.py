"""API-key check for the control plane.

With a key configured, every route needs ``Authorization: Api-Key <key>`` (what
the SDK sends) or ``Authorization: Bearer <key>``; the only exception is the
signed file route, because the SDK downloads those URLs with no headers and the
URL's own signature is the credential there.
"""

from __future__ import annotations

import hmac
from typing import Any

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


class ApiKeyMiddleware:
    """Pure ASGI (no response buffering, nothing cancelled on client disconnect)."""

    def __init__(self, app: Any, expected: str) -> None:
        self.app = app
        self.expected = expected

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith(FILES_PREFIX):
            await self.app(scope, receive, send)
            return
        authorization = None
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        if key_matches(self.expected, authorization):
            await self.app(scope, receive, send)
            return
        response = error_response(
            401,
            f"{'missing' if authorization is None else 'invalid'} API key: send "
            "'Authorization: Api-Key <key>' (or 'Bearer <key>') with the key this control "
            "plane was started with",
            "UNAUTHENTICATED",
            headers={"WWW-Authenticate": 'Api-Key realm="loops"'},
        )
        await response(scope, receive, send)
