"""A queued ("serverless") sampler front for the real sampler, for the client's 6.6 path.

Baseten's serverless samplers accept ``POST /sample`` with 202 and an
operation id, and are polled on ``GET /operations/{id}``. Our local stack
only has dedicated samplers, so this small server on 127.0.0.1 puts that
protocol in front of the real sampler: every accepted request is forwarded
to it (routing headers included) in a thread, and its completion becomes the
operation's result.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

FORWARDED = ("x-checkpoint-path", "x-run-id", "x-min-policy-version")


class QueueAdapter:
    def __init__(self, sampler_url: str, *, hold: float = 0.5) -> None:
        self.sampler_url = sampler_url.rstrip("/")
        self.hold = hold  # how long a poll waits before answering 408
        self.delay = 0.0  # extra time before a request runs (a slow queue)
        self.retry_after_polls = 0  # answer this many polls with 503 + Retry-After
        self.submits: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.cancelled: list[str] = []
        self._ops: dict[str, dict[str, Any]] = {}
        self._by_key: dict[str, str] = {}
        self._lock = threading.Lock()
        adapter = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                adapter._post(self)

            def do_GET(self) -> None:
                adapter._get(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- handlers ----------------------------------------------------------------------

    @staticmethod
    def _reply(handler: BaseHTTPRequestHandler, status: int, payload: Any,
               headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def _post(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        if handler.path.startswith("/operations/") and handler.path.endswith("/cancel"):
            op_id = handler.path.split("/")[2]
            with self._lock:
                op = self._ops.get(op_id)
                self.cancelled.append(op_id)
                pending = op is not None and op["state"] == "queued"
                if pending:
                    op["state"] = "cancelled"
            self._reply(handler, 200 if pending else 409, {})
            return
        headers = {k.lower(): v for k, v in handler.headers.items()}
        body = json.loads(raw)
        key = headers.get("idempotency-key") or uuid.uuid4().hex
        with self._lock:
            self.submits.append((headers, body))
            op_id = self._by_key.get(key)
            if op_id is None:  # the same key is the same job: never run twice
                op_id = self._by_key[key] = uuid.uuid4().hex
                self._ops[op_id] = {"state": "queued", "result": None}
                threading.Thread(target=self._run, args=(op_id, headers, body),
                                 daemon=True).start()
        self._reply(handler, 202, {"operation_id": op_id, "schema_version": 1})

    def _run(self, op_id: str, headers: dict[str, str], body: dict[str, Any]) -> None:
        time.sleep(self.delay)
        with self._lock:
            if self._ops[op_id]["state"] == "cancelled":
                return
            self._ops[op_id]["state"] = "running"
        forward = {k: v for k, v in headers.items() if k in FORWARDED}
        payload = {k: v for k, v in body.items() if k not in ("model", "lora")}
        response = httpx.post(f"{self.sampler_url}/sample", json=payload, headers=forward,
                              timeout=120)
        with self._lock:
            if response.status_code == 200:
                self._ops[op_id].update(state="done", result=response.json())
            else:
                self._ops[op_id].update(state="error", result=response.text)

    def _get(self, handler: BaseHTTPRequestHandler) -> None:
        op_id = handler.path.split("/")[-1]
        with self._lock:
            if self.retry_after_polls > 0:
                self.retry_after_polls -= 1
                throttled = True
            else:
                throttled = False
        if throttled:
            self._reply(handler, 503, {"detail": "queue busy"}, {"Retry-After": "1"})
            return
        deadline = time.monotonic() + self.hold
        while True:
            with self._lock:
                op = self._ops.get(op_id)
                state = None if op is None else op["state"]
            if op is None:
                self._reply(handler, 404, {"detail": "unknown operation"})
                return
            if state == "done":
                self._reply(handler, 200, {"status": "done", "result": op["result"]})
                return
            if state == "error":
                self._reply(handler, 200, {"status": "error", "error": op["result"],
                                           "error_class": "SamplerError"})
                return
            if time.monotonic() >= deadline:
                self._reply(handler, 408, {"detail": "pending"})
                return
            time.sleep(0.02)
