"""A small HTTP proxy on 127.0.0.1 that forwards to a real server and injects faults.

Tests put it in front of the real trainer, sampler or control plane to see
exactly what the client sends (``requests``) and to make the server look
sick for a while (``inject``): answer 502 for three seconds, 404 on polls,
hold a response past the client's timeout, and so on. Everything else is
forwarded unchanged.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

HOP_HEADERS = {"host", "content-length", "connection", "transfer-encoding", "keep-alive",
               "content-encoding"}


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0
    at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class Fault:
    """Answer ``status`` (or delay) for matching requests while active."""

    method: str | None
    path_prefix: str
    status: int | None = None
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to hold the request before acting
    times: int | None = None  # how many matching requests, None = until `until`
    until: float | None = None  # monotonic deadline
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method != method:
            return False
        if not path.startswith(self.path_prefix):
            return False
        if self.times is not None and self.hits >= self.times:
            return False
        return not (self.until is not None and time.monotonic() >= self.until)


class FaultProxy:
    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.requests: list[Recorded] = []
        self.faults: list[Fault] = []
        self._lock = threading.Lock()
        self._client = httpx.Client(timeout=120.0)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _handle(self) -> None:
                proxy._serve(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def inject(self, path_prefix: str, *, method: str | None = None, status: int | None = None,
               body: Any = None, headers: dict[str, str] | None = None, delay: float = 0.0,
               times: int | None = None, seconds: float | None = None) -> Fault:
        fault = Fault(method, path_prefix, status, body, headers or {}, delay, times,
                      None if seconds is None else time.monotonic() + seconds)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.requests.clear()

    def seen(self, method: str | None = None, path_prefix: str = "") -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if (method is None or r.method == method)
                    and r.path.startswith(path_prefix)]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._client.close()

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in handler.headers.items()}
        record = Recorded(handler.command, handler.path, headers, body)
        with self._lock:
            self.requests.append(record)
            fault = next((f for f in self.faults if f.matches(handler.command, handler.path)),
                         None)
            if fault is not None:
                fault.hits += 1
        if fault is not None and fault.delay:
            time.sleep(fault.delay)
        if fault is not None and fault.status is not None:
            payload = fault.body if isinstance(fault.body, bytes) else \
                json.dumps(fault.body if fault.body is not None else {"detail": "injected"}
                           ).encode()
            record.status = fault.status
            self._reply(handler, fault.status, {"content-type": "application/json",
                                                **fault.headers}, payload)
            return
        try:
            upstream = self._client.request(
                handler.command, self.target + handler.path, content=body,
                headers={k: v for k, v in headers.items() if k not in HOP_HEADERS})
        except httpx.HTTPError as exc:
            record.status = 599
            self._reply(handler, 502, {"content-type": "text/plain"},
                        f"proxy: upstream failed: {exc!r}".encode())
            return
        record.status = upstream.status_code
        self._reply(handler, upstream.status_code,
                    {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS},
                    upstream.content)

    @staticmethod
    def _reply(handler: BaseHTTPRequestHandler, status: int, headers: dict[str, str],
               payload: bytes) -> None:
        try:
            handler.send_response(status)
            for key, value in headers.items():
                handler.send_header(key, value)
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (e.g. its read timeout): nothing to tell it
