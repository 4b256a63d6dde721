"""Tombstones: the port of a failed or stopped server keeps answering, with an error.

The SDK treats a refused connection as "server still starting" and retries it
for its whole ready timeout (an hour by default). So when a deployment is gone
for good, the control plane listens on its old port and answers every request
with an error the SDK does not retry: 503 for a trainer (the SDK raises
``ServerShutdownError``), a vLLM-style 400 for a sampler. The message says what
happened and what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict

from loops_runner.servers.control_plane.deployment_states import TRAINER
from loops_runner.servers.control_plane.tables import DeploymentRow

logger = logging.getLogger(__name__)

MAX_TOMBSTONES = 64
_MAX_HEAD = 64 * 1024
_MAX_BODY = 64 * 1024 * 1024


def _response(kind: str, message: str) -> bytes:
    if kind == TRAINER:
        status = "503 Service Unavailable"
        body = {"detail": message, "details": {"reason": "DEPLOYMENT_GONE"}}
    else:
        status = "400 Bad Request"
        body = {"error": {"type": "BadRequestError", "message": message, "param": None,
                          "code": 400}}
    payload = json.dumps(body).encode()
    head = (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n")
    return head.encode() + payload


class Tombstones:
    def __init__(self) -> None:
        self._servers: OrderedDict[int, asyncio.Server] = OrderedDict()

    async def install(self, row: DeploymentRow, message: str) -> None:
        port = row.port
        if port is None:
            return
        self.release(port)
        response = _response(row.kind, f"{message}. Create a new run or sampler through the "
                                       "control plane.")

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
                length = 0
                for line in head.decode(errors="replace").split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip() or 0)
                if 0 < length <= _MAX_BODY:
                    await asyncio.wait_for(reader.readexactly(length), 10.0)
                writer.write(response)
                await writer.drain()
            except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    TimeoutError):
                pass
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

        try:
            server = await asyncio.start_server(answer, "127.0.0.1", port, limit=_MAX_HEAD,
                                                reuse_address=True)
        except OSError as exc:  # someone else took the port: nothing to guard
            logger.info("no tombstone on port %s: %s", port, exc)
            return
        self._servers[port] = server
        while len(self._servers) > MAX_TOMBSTONES:
            _, oldest = self._servers.popitem(last=False)
            oldest.close()

    def release(self, port: int) -> None:
        server = self._servers.pop(port, None)
        if server is not None:
            server.close()

    def close_all(self) -> None:
        for server in self._servers.values():
            server.close()
        self._servers.clear()
