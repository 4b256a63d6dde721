"""The generic operation store, behind a toy app on a real uvicorn server.

Short holds and small caps make the 408, eviction and retention paths
observable in well under a second each.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from loops_runner.servers.common import Refusal, bind_socket, server_url
from loops_runner.servers.operation_store import (
    Accepted,
    OperationStore,
    idempotency_key,
    install_operation_routes,
)


class ToyServer:
    def __init__(self, store: OperationStore) -> None:
        self.store = store
        self.executed: list[str] = []
        self.app = FastAPI()
        install_operation_routes(self.app, store)
        self.url = ""
        self.loop: asyncio.AbstractEventLoop | None = None

        @self.app.post("/work")
        async def work(request: Request, seconds: float = 0.0, tag: str = "",
                       fail: bool = False, reject: bool = False) -> Response:
            body = await request.body()
            self.loop = asyncio.get_running_loop()

            async def prepare() -> Accepted:
                if reject:
                    raise Refusal(422, "refused at submit", "INVALID_REQUEST")

                def job() -> dict[str, Any]:
                    time.sleep(seconds)
                    self.executed.append(tag)
                    if fail:
                        raise ValueError(f"job {tag} failed")
                    return {"tag": tag}

                return Accepted(job=job)

            return await store.submit(kind="work", body=body, key=idempotency_key(request),
                                      prepare=prepare)

        @self.app.get("/ping")
        async def ping() -> Response:
            return JSONResponse({"ok": True})

        @self.app.post("/shutdown")
        async def shutdown() -> Response:
            store.begin_shutdown()
            return JSONResponse({"ok": True})

        _ = (work, ping, shutdown)


@pytest.fixture
def toy() -> Iterator[ToyServer]:
    store = OperationStore(poll_hold_s=0.3, retention_s=3600, max_finished=3)
    server = ToyServer(store)
    sock = bind_socket("127.0.0.1", 0)
    server.url = server_url(sock)
    uv = uvicorn.Server(uvicorn.Config(server.app, log_level="warning"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield server
    uv.should_exit = True
    thread.join(5)
    store.close()


def _poll(client: httpx.Client, url: str, operation_id: str) -> httpx.Response:
    while True:
        response = client.get(f"{url}/operations/{operation_id}")
        if response.status_code != 408:
            return response


def test_submit_answers_202_with_key_as_id_and_location(toy: ToyServer) -> None:
    with httpx.Client() as client:
        response = client.post(f"{toy.url}/work?tag=a", content=b"{}",
                               headers={"Idempotency-Key": "key/wit-1"})
        assert response.status_code == 202
        assert response.json() == {"operation_id": "key/wit-1", "schema_version": 1}
        assert response.headers["Location"] == "/operations/key%2Fwit-1"
        # The SDK URL-encodes ids; the route accepts the encoded form.
        done = _poll(client, toy.url, "key%2Fwit-1")
        assert done.status_code == 200
        assert done.json() == {"status": "done", "result": {"tag": "a"}}


def test_missing_key_generates_an_id_and_bad_key_is_422(toy: ToyServer) -> None:
    with httpx.Client() as client:
        first = client.post(f"{toy.url}/work?tag=x", content=b"{}")
        second = client.post(f"{toy.url}/work?tag=x", content=b"{}")
        assert first.status_code == second.status_code == 202
        assert first.json()["operation_id"] != second.json()["operation_id"]
        bad = client.post(f"{toy.url}/work", content=b"{}", headers={"Idempotency-Key": "a b"})
        assert bad.status_code == 422
        assert "Idempotency-Key" in bad.json()["detail"]
        for response in (first, second):
            assert _poll(client, toy.url, response.json()["operation_id"]).status_code == 200
    assert toy.executed == ["x", "x"]


def test_pending_poll_is_held_then_408_then_done(toy: ToyServer) -> None:
    with httpx.Client() as client:
        response = client.post(f"{toy.url}/work?seconds=3.0&tag=slow", content=b"{}",
                               headers={"Idempotency-Key": "slow"})
        started = time.monotonic()
        pending = client.get(f"{toy.url}/operations/slow")
        assert pending.status_code == 408
        assert time.monotonic() - started >= 0.25  # held for poll_hold_s, not answered at once
        # The event loop stays free while the job runs on the worker thread:
        # other requests are answered before the job ends.
        assert client.get(f"{toy.url}/ping").status_code == 200
        op = toy.store.get("slow")
        assert op is not None and op.state == "running"
        assert _poll(client, toy.url, response.json()["operation_id"]).status_code == 200


def test_failed_job_reports_error_and_class(toy: ToyServer) -> None:
    with httpx.Client() as client:
        client.post(f"{toy.url}/work?fail=true&tag=f", content=b"{}",
                    headers={"Idempotency-Key": "f1"})
        outcome = _poll(client, toy.url, "f1")
        assert outcome.status_code == 200
        assert outcome.json() == {"status": "error", "error": "job f failed",
                                  "error_class": "ValueError"}
        # Repeated polls keep answering the same outcome.
        assert _poll(client, toy.url, "f1").json() == outcome.json()


def test_rejected_submit_is_not_recorded(toy: ToyServer) -> None:
    with httpx.Client() as client:
        refused = client.post(f"{toy.url}/work?reject=true", content=b"{}",
                              headers={"Idempotency-Key": "r1"})
        assert refused.status_code == 422
        assert client.get(f"{toy.url}/operations/r1").status_code == 404
        # The same key with a valid request is then accepted normally.
        accepted = client.post(f"{toy.url}/work?tag=ok", content=b"{}",
                               headers={"Idempotency-Key": "r1"})
        assert accepted.status_code == 202
        assert _poll(client, toy.url, "r1").status_code == 200


def test_concurrent_replays_run_once_and_conflicting_body_is_409(toy: ToyServer) -> None:
    def submit(_: int) -> httpx.Response:
        return httpx.post(f"{toy.url}/work?seconds=0.2&tag=once", content=b'{"a":1}',
                          headers={"Idempotency-Key": "same"})

    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(submit, range(20)))
    assert {r.status_code for r in responses} == {202}
    assert {r.json()["operation_id"] for r in responses} == {"same"}
    with httpx.Client() as client:
        assert _poll(client, toy.url, "same").status_code == 200
        conflict = client.post(f"{toy.url}/work?seconds=0.2&tag=once", content=b'{"a":2}',
                               headers={"Idempotency-Key": "same"})
        assert conflict.status_code == 409
    assert toy.executed == ["once"]


def test_execution_follows_acceptance_order(toy: ToyServer) -> None:
    with httpx.Client() as client:
        ids = []
        for i in range(30):
            response = client.post(f"{toy.url}/work?tag={i}", content=str(i).encode())
            ids.append(response.json()["operation_id"])
        op = toy.store.get(ids[-1])
        assert op is not None
        assert _poll(client, toy.url, ids[-1]).status_code == 200
    assert toy.executed == [str(i) for i in range(30)]


def test_eviction_keeps_memory_bounded_and_replays_never_rerun(toy: ToyServer) -> None:
    with httpx.Client() as client:
        for i in range(5):
            client.post(f"{toy.url}/work?tag=e{i}", content=b"{}",
                        headers={"Idempotency-Key": f"e{i}"})
            assert _poll(client, toy.url, f"e{i}").status_code == 200
        # max_finished=3: the two oldest results are gone (404 = UnknownRequestError) ...
        assert client.get(f"{toy.url}/operations/e0").status_code == 404
        assert client.get(f"{toy.url}/operations/e4").status_code == 200
        assert toy.store.counts()["done"] == 3
        # ... and a late replay of an evicted submit is recognised, not re-run.
        replay = client.post(f"{toy.url}/work?tag=e0", content=b"{}",
                             headers={"Idempotency-Key": "e0"})
        assert replay.status_code == 202
    assert toy.executed == ["e0", "e1", "e2", "e3", "e4"]


def test_retention_expires_old_results() -> None:
    async def scenario() -> tuple[int, int]:
        store = OperationStore(poll_hold_s=0.2, retention_s=0.3)

        async def prepare() -> Accepted:
            return Accepted(job=lambda: {"ok": True})

        await store.submit(kind="k", body=b"1", key="old", prepare=prepare)
        first = (await store.poll("old")).status_code
        await asyncio.sleep(0.4)
        await store.submit(kind="k", body=b"2", key="new", prepare=prepare)  # triggers expiry
        second = (await store.poll("old")).status_code
        store.close()
        return first, second

    assert asyncio.run(scenario()) == (200, 404)


def test_shutdown_answers_503_and_releases_held_polls(toy: ToyServer) -> None:
    with httpx.Client() as client:
        client.post(f"{toy.url}/work?seconds=6&tag=long", content=b"{}",
                    headers={"Idempotency-Key": "long"})
        with ThreadPoolExecutor(1) as pool:
            toy.store.poll_hold_s = 30  # a long hold, to see the release
            held = pool.submit(client.get, f"{toy.url}/operations/long")
            time.sleep(0.2)
            assert client.post(f"{toy.url}/shutdown").status_code == 200
            assert held.result().status_code == 503
        # Released by the shutdown, not by the job finishing.
        op = toy.store.get("long")
        assert op is not None and op.state == "running"
        assert client.post(f"{toy.url}/work", content=b"{}").status_code == 503
        assert client.get(f"{toy.url}/operations/long").status_code == 503


def test_listening_socket_lets_asyncio_disable_nagle() -> None:
    """Accepted connections get TCP_NODELAY only from a socket declared as TCP;
    without it every kept-alive poll answer stalls on delayed ACKs (~40 ms)."""
    import socket

    sock = bind_socket("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
