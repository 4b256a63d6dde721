"""Request activity of a server, for the control plane's idle timer.

The control plane stops trainers and samplers nobody has used for its idle
timeout. Only the server itself sees its traffic (clients talk to it directly),
so every server started through ``serve_app`` is wrapped in this ASGI
middleware, which remembers when the last request ended and how many are in
flight, and answers ``GET /internal/activity`` with
``{"idle_seconds", "in_flight", "last_activity"}``.

Requests carrying ``X-Loops-Supervisor`` (the control plane's own health and
activity probes) are not counted, or supervision alone would keep every server
alive forever. SDK heartbeats (``GET /health`` every 60 s) do count: a client
that still holds a training client keeps its trainer.
"""

from __future__ import annotations

import json
import time
from typing import Any

ACTIVITY_PATH = "/internal/activity"
SUPERVISOR_HEADER = "X-Loops-Supervisor"
_SUPERVISOR_HEADER_KEY = SUPERVISOR_HEADER.lower().encode()

Scope = dict[str, Any]


class ActivityTracker:
    """ASGI middleware: counts non-supervisor HTTP requests and serves the activity route."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.last_activity = time.time()
        self.in_flight = 0

    def snapshot(self) -> dict[str, float | int]:
        idle = 0.0 if self.in_flight else max(0.0, time.time() - self.last_activity)
        return {"idle_seconds": idle, "in_flight": self.in_flight,
                "last_activity": self.last_activity}

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == ACTIVITY_PATH and scope["method"] == "GET":
            body = json.dumps(self.snapshot()).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        if any(key == _SUPERVISOR_HEADER_KEY for key, _ in scope.get("headers", ())):
            await self.app(scope, receive, send)
            return
        self.in_flight += 1
        self.last_activity = time.time()
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            self.last_activity = time.time()
