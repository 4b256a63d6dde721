"""API-key check for the control plane.

With a key configured, every route needs ``Authorization: Api-Key <key>`` (what
the SDK sends) or ``Authorization: Bearer <key>``; the only exception is the
signed file route, because the SDK downloads those URLs with no headers and the
URL's own signature is the credential there.

The key never travels on a command line, where any local user reads it (``ps``,
``/proc/<pid>/cmdline``) and where the launcher's log would record it: the
server reads it from ``$LOOPS_CONTROL_PLANE_API_KEY`` or from a file only its
owner can read (``--api-key-file``, mode 0600, as the runner's daemon key is).
"""

from __future__ import annotations

import hmac
import os
import stat
from pathlib import Path
from typing import Any

from loops_runner.servers.common import error_response

FILES_PREFIX = "/files/"
API_KEY_ENV = "LOOPS_CONTROL_PLANE_API_KEY"
_SCHEMES = ("api-key", "bearer")


def configured_key(key_file: Path | None) -> str | None:
    """The key from ``key_file`` (owner-only, non-empty) or ``$LOOPS_CONTROL_PLANE_API_KEY``.

    Raises ValueError naming the file and what is wrong with it; a key that
    others can read is refused, not used.
    """
    if key_file is None:
        return os.environ.get(API_KEY_ENV) or None
    try:
        mode = key_file.stat().st_mode
        key = key_file.read_text().strip()
    except OSError as exc:
        raise ValueError(f"--api-key-file {key_file}: cannot read it ({exc.strerror})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"--api-key-file {key_file}: mode {stat.S_IMODE(mode):04o} lets other "
                         f"users read the key; make it 0600 (chmod 600 {key_file})")
    if not key:
        raise ValueError(f"--api-key-file {key_file}: the file is empty")
    return key


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
