"""The control plane's API without trainer processes: auth, sessions, validation,
the checkpoint registry, signed file URLs and restarts.

One control plane (a real ``loops-runner serve control-plane`` subprocess with
its own data home and an API key) serves the whole module; checkpoint folders
are written the way the trainer writes them.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loops_runner.servers.control_plane.files import FileRef, FileSigner, load_or_create_secret
from loops_runner.storage.manifests import checkpoint_api_id
from tests.control_plane.helpers import ControlPlaneProcess, start_control_plane, write_checkpoint

API_KEY = "test-key-7f3a"


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    process = start_control_plane(tmp_path_factory.mktemp("cp_api_home"), api_key=API_KEY)
    yield process
    process.stop()


@pytest.fixture
def client(cp: ControlPlaneProcess) -> Iterator[httpx.Client]:
    with cp.client(timeout=60.0) as http:
        yield http


def assert_error(response: httpx.Response, status: int, reason: str | None = None) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["detail"], str) and body["detail"]
    if reason is not None:
        assert body["details"]["reason"] == reason, body
    return body["detail"]


def test_api_key_required_everywhere_but_signed_files(cp: ControlPlaneProcess) -> None:
    with httpx.Client(base_url=cp.url, timeout=30.0) as anonymous:
        for method, path in (("POST", "/v1/loops/sessions"), ("GET", "/v1/teams"),
                             ("GET", "/v1/loops/capabilities"), ("GET", "/health"),
                             ("GET", "/v1/loops/checkpoints?run_id=x"),
                             ("POST", "/v1/loops/trainers")):
            detail = assert_error(anonymous.request(method, path), 401, "UNAUTHENTICATED")
            assert "API key" in detail
        assert_error(anonymous.post("/v1/loops/sessions",
                                    headers={"Authorization": "Api-Key wrong"}), 401)
        assert_error(anonymous.post("/v1/loops/sessions",
                                    headers={"Authorization": API_KEY}), 401)
        assert anonymous.post("/v1/loops/sessions",
                              headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
        # Signed file URLs carry their own credential: a bad one is 403, not 401.
        assert_error(anonymous.get("/files/not-a-token"), 403, "FORBIDDEN")


def test_sessions_with_and_without_body_and_teams(client: httpx.Client) -> None:
    bare = client.post("/v1/loops/sessions")  # SDK 0.32: no body, no content type
    assert bare.status_code == 200, bare.text
    session_id = bare.json()["session"]["id"]
    older = client.post("/v1/loops/sessions", json={"training_project_id": "proj-1"})
    assert older.json()["session"]["training_project_id"] == "proj-1"
    teams = client.get("/v1/teams").json()["teams"]
    assert len(teams) == 1
    scoped = client.post(f"/v1/teams/{teams[0]['id']}/loops/sessions")
    assert scoped.status_code == 200
    assert_error(client.post("/v1/teams/team-nope/loops/sessions"), 422, "UNKNOWN_TEAM")
    got = client.get(f"/v1/loops/sessions/{session_id}").json()["session"]
    assert got["id"] == session_id and got["run_ids"] == []
    assert_error(client.get("/v1/loops/sessions/sess-nope"), 404)


def test_create_routes_refuse_bad_input_with_422(client: httpx.Client) -> None:
    session_id = client.post("/v1/loops/sessions").json()["session"]["id"]
    base = {"session_id": session_id, "base_model": "qwen3-0.6b", "lora_rank": 8,
            "replicas": 1, "availability_model": "dedicated"}
    cases: list[tuple[str, object, str]] = [
        ("/v1/loops/trainers", {**base, "session_id": "sess-missing"}, "UNKNOWN_SESSION"),
        ("/v1/loops/trainers", {k: v for k, v in base.items() if k != "base_model"},
         "VALIDATION_ERROR"),
        ("/v1/loops/trainers", {**base, "lora_rank": 0}, "VALIDATION_ERROR"),
        ("/v1/loops/trainers", {**base, "replicas": 0}, "VALIDATION_ERROR"),
        ("/v1/loops/trainers", {**base, "availability_model": "cheap"}, "VALIDATION_ERROR"),
        ("/v1/loops/trainers", {**base, "max_seq_len": 10**7}, "MAX_SEQ_LEN_TOO_LARGE"),
        ("/v1/loops/trainers", {**base, "base_model": "/no/such/model/dir"},
         "INVALID_BASE_MODEL"),
        ("/v1/loops/trainers", {**base, "path": "bt://loops:../weights/x"},
         "INVALID_CHECKPOINT_PATH"),
        ("/v1/loops/trainers", {**base, "path": "bt://loops:run-x/weights/missing"},
         "CHECKPOINT_NOT_FOUND"),
        ("/v1/loops/trainers", {**base, "reuse_from_run_id": "run-nope"}, "UNKNOWN_RUN"),
        ("/v1/loops/trainers", {**base, "reuse_from_session_id": "sess-nope"},
         "UNKNOWN_SESSION"),
        ("/v1/loops/trainers", {**base, "reuse_from_run_id": "a",
                                "reuse_from_session_id": "b"}, "INVALID_REQUEST"),
        ("/v1/loops/trainers", [1, 2], "INVALID_REQUEST"),
        ("/v1/loops/runs", {**base, "session_id": "sess-missing"}, "UNKNOWN_SESSION"),
        ("/v1/loops/samplers", {"session_id": session_id}, "INVALID_REQUEST"),
        ("/v1/loops/samplers", {"session_id": session_id, "base_model": "tiny",
                                "model_path": "bt://loops:r/sampler_weights/x"},
         "INVALID_REQUEST"),
        ("/v1/loops/samplers", {"session_id": session_id, "run_id": "run-nope"}, "UNKNOWN_RUN"),
        ("/v1/loops/samplers", {"session_id": session_id,
                                "model_path": "bt://loops:run-x/sampler_weights/../x"},
         "INVALID_CHECKPOINT_PATH"),
        ("/v1/loops/samplers", {"session_id": session_id, "base_model": "qwen3-0.6b",
                                "max_seq_length": 10**7}, "MAX_SEQ_LEN_TOO_LARGE"),
        ("/v1/loops/debug/samplers", {"session_id": "sess-missing", "base_model": "tiny"},
         "UNKNOWN_SESSION"),
    ]
    for path, body, reason in cases:
        response = client.post(path, json=body)
        assert_error(response, 422, reason)
    assert_error(client.post("/v1/loops/trainers", content=b"{not json",
                             headers={"content-type": "application/json"}), 422, "INVALID_JSON")
    assert_error(client.post("/v1/loops/trainers",
                             json={**base, "base_checkpoint": "hf://org/repo"}), 501,
                 "NOT_SUPPORTED")
    # Nothing was created by any of them.
    assert client.get("/v1/loops/runs").json()["runs"] == []
    assert client.get("/v1/loops/deployments").json()["deployments"] == []


def test_unknown_ids_on_read_routes(client: httpx.Client) -> None:
    assert_error(client.get("/v1/loops/deployments/dep-nope"), 404)
    assert_error(client.get("/v1/models/model-x/deployments/dep-nope"), 404)
    assert_error(client.get("/v1/loops/runs/run-nope"), 404)
    assert_error(client.get("/v1/loops/samplers/smp-nope"), 404)
    assert_error(client.get("/v1/loops/checkpoints/ckpt-nope/files"), 404)
    assert_error(client.get("/v1/loops/checkpoints/ckpt-nope/source"), 404)
    assert_error(client.post("/v1/loops/deployments/dep-nope/deactivate"), 404)


def test_capabilities_list_registry_models_and_devices(client: httpx.Client) -> None:
    body = client.get("/v1/loops/capabilities").json()
    models = {model["model_name"]: model for model in body["supported_models"]}
    assert models["tiny"]["max_context_length"] == 2048
    assert models["Qwen/Qwen3-0.6B"]["max_context_length"] == 40960
    assert body["device_classes"][0] == "cpu"
    assert models["tiny"]["device_classes"] == body["device_classes"]


def test_checkpoint_listing_filters(cp: ControlPlaneProcess, client: httpx.Client) -> None:
    write_checkpoint(cp.home, "run-list", "weights", "step-2", base_model="/models/list-a")
    write_checkpoint(cp.home, "run-list", "sampler_weights", "step-2",
                     base_model="/models/list-a")
    write_checkpoint(cp.home, "run-other", "weights", "w", base_model="/models/list-b", rank=4)
    by_run = client.get("/v1/loops/checkpoints", params={"run_id": "run-list"}).json()
    listed = {(c["checkpoint_id"], c["target"]) for c in by_run["checkpoints"]}
    assert listed == {("step-2", "trainer"), ("step-2", "sampler")}
    for checkpoint in by_run["checkpoints"]:
        assert checkpoint["lora_adapter_config"]["r"] == 8
        assert checkpoint["base_model"] == "/models/list-a"
        assert checkpoint["size_bytes"] > 2000 and checkpoint["created_at"].endswith("Z")
        assert checkpoint["checkpoint_type"] in {"training", "sampler"}
    by_path = client.get("/v1/loops/checkpoints",
                         params={"checkpoint_path": "bt://loops:run-other/weights/w/"}).json()
    assert [c["id"] for c in by_path["checkpoints"]] == [
        checkpoint_api_id("run-other", "weights", "w")]
    assert by_path["checkpoints"][0]["lora_adapter_config"]["r"] == 4
    missing = client.get("/v1/loops/checkpoints",
                         params={"checkpoint_path": "bt://loops:run-other/weights/nope"})
    assert missing.status_code == 200 and missing.json()["checkpoints"] == []
    by_model = client.get("/v1/loops/checkpoints", params={"base_model": "/models/list-b"})
    assert [c["run_id"] for c in by_model.json()["checkpoints"]] == ["run-other"]
    assert_error(client.get("/v1/loops/checkpoints"), 422)
    assert_error(client.get("/v1/loops/checkpoints",
                            params={"run_id": "run-list", "base_model": "x"}), 422)
    assert_error(client.get("/v1/loops/checkpoints",
                            params={"checkpoint_path": "bt://loops:run/weights/../../x"}), 422)


def test_files_paginate_and_download_byte_identical(cp: ControlPlaneProcess,
                                                    client: httpx.Client) -> None:
    files = {"adapter_config.json": b'{"r": 8}', "adapter_model.safetensors": bytes(range(256)) * 9,
             "optimizer/state.safetensors": b"\x00\x01" * 700, "step.json": b'{"step": 3}'}
    write_checkpoint(cp.home, "run-files", "weights", "full", base_model="/m", files=files)
    checkpoint_id = checkpoint_api_id("run-files", "weights", "full")
    assert client.get(f"/v1/loops/checkpoints/{checkpoint_id}/source").json() == {
        "source": {"kind": "s3"}}
    pages, token = [], 0
    while token is not None:
        page = client.get(f"/v1/loops/checkpoints/{checkpoint_id}/files",
                          params={"page_size": 2, "page_token": token}).json()
        pages.append(page)
        token = page["next_page_token"]
    assert [len(page["presigned_urls"]) for page in pages] == [2, 2, 1]
    assert {page["total_count"] for page in pages} == {5}  # + checkpoint.json
    entries = [entry for page in pages for entry in page["presigned_urls"]]
    names = [entry["relative_file_name"] for entry in entries]
    assert names == sorted(names) and "optimizer/state.safetensors" in names
    with httpx.Client(timeout=30.0) as bare:  # no headers at all, as the SDK downloads
        for entry in entries:
            assert entry["node_rank"] == 0 and entry["last_modified"]
            response = bare.get(entry["url"])
            assert response.status_code == 200, response.text
            assert len(response.content) == entry["size_bytes"]
            if entry["relative_file_name"] in files:
                assert response.content == files[entry["relative_file_name"]]
        # Tampering with any part of a URL's token makes it worthless.
        url = entries[1]["url"]
        token_text = url.rsplit("/", 1)[1]
        payload, mac = token_text.split(".")
        flipped = "A" if payload[5] != "A" else "B"
        tampered = url.replace(token_text, f"{payload[:5]}{flipped}{payload[6:]}.{mac}")
        assert_error(bare.get(tampered), 403, "FORBIDDEN")
        # A correctly signed but expired token (signed with the server's own key).
        signer = FileSigner(load_or_create_secret(cp.home))
        expired, _ = signer.sign(FileRef("run-files", "weights", "full", "step.json"),
                                 expires_at=int(time.time()) - 5)
        detail = assert_error(bare.get(f"{cp.url}/files/{expired}"), 403, "FORBIDDEN")
        assert "expired" in detail
        # Even a validly signed token cannot name a path outside the checkpoint.
        for relative in ("../../../../control_plane.secret", "../full/step.json", "/etc/passwd"):
            escape, _ = signer.sign(FileRef("run-files", "weights", "full", relative))
            assert_error(bare.get(f"{cp.url}/files/{escape}"), 403, "FORBIDDEN")
    assert_error(client.get(f"/v1/loops/checkpoints/{checkpoint_id}/files",
                            params={"page_size": 0}), 422)
    assert_error(client.get(f"/v1/loops/checkpoints/{checkpoint_id}/files",
                            params={"page_token": -1}), 422)
    assert_error(client.get(f"/v1/loops/checkpoints/{checkpoint_id}/files",
                            params={"page_token": "x"}), 422)
    beyond = client.get(f"/v1/loops/checkpoints/{checkpoint_id}/files",
                        params={"page_token": 50}).json()
    assert beyond["presigned_urls"] == [] and beyond["next_page_token"] is None


def test_validate_checkpoint(cp: ControlPlaneProcess, client: httpx.Client) -> None:
    write_checkpoint(cp.home, "run-val", "sampler_weights", "pub", base_model="/m")
    ok = client.post("/v1/loops/checkpoints/validate",
                     json={"checkpoint_path": "bt://loops:run-val/sampler_weights/pub",
                           "run_id": "run-val"})
    assert ok.status_code == 200 and ok.json() == {}
    for path, reason in (("bt://loops:run-val/sampler_weights/nope", "CHECKPOINT_NOT_FOUND"),
                         ("bt://loops:run-val/sampler_weights/..", "INVALID_CHECKPOINT_PATH"),
                         ("s3://bucket/key", "CHECKPOINT_NOT_FOUND"),
                         ("bt://loops:run-val/sequences/x", "INVALID_CHECKPOINT_PATH")):
        assert_error(client.post("/v1/loops/checkpoints/validate",
                                 json={"checkpoint_path": path, "run_id": "run-val"}), 422,
                     reason)
    assert_error(client.post("/v1/loops/checkpoints/validate", json={}), 422)


def test_expired_checkpoint_is_deleted(cp: ControlPlaneProcess, client: httpx.Client) -> None:
    folder = write_checkpoint(cp.home, "run-ttl", "weights", "brief", base_model="/m",
                              ttl_seconds=1)
    listed = client.get("/v1/loops/checkpoints", params={"run_id": "run-ttl"}).json()
    assert [c["checkpoint_id"] for c in listed["checkpoints"]] == ["brief"]
    time.sleep(1.3)
    listed = client.get("/v1/loops/checkpoints", params={"run_id": "run-ttl"}).json()
    assert listed["checkpoints"] == [] and not folder.exists()


def test_one_control_plane_per_home_and_restart_keeps_state(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    home = tmp_path_factory.mktemp("cp_restart_home")
    first = start_control_plane(home)
    try:
        with first.client() as http:
            session_id = http.post("/v1/loops/sessions").json()["session"]["id"]
            write_checkpoint(home, "run-keep", "weights", "kept", base_model="/m")
            checkpoint_id = checkpoint_api_id("run-keep", "weights", "kept")
            url = http.get(f"/v1/loops/checkpoints/{checkpoint_id}/files").json()[
                "presigned_urls"][0]["url"]
        second = subprocess.run(
            [sys.executable, "-m", "loops_runner.cli", "serve", "control-plane", "--home",
             str(home), "--port", "0"], capture_output=True, text=True, timeout=60)
        assert second.returncode != 0 and "already uses the data home" in second.stderr
    finally:
        first.stop()
    assert not Path(home / "control_plane.json").exists()
    restarted = start_control_plane(home)
    try:
        with restarted.client() as http:
            assert http.get(f"/v1/loops/sessions/{session_id}").status_code == 200
            listed = http.get("/v1/loops/checkpoints", params={"run_id": "run-keep"}).json()
            assert [c["id"] for c in listed["checkpoints"]] == [checkpoint_id]
        # The signing key persisted: URLs handed out before the restart still work
        # (the port changed, the token did not).
        token = url.rsplit("/", 1)[1]
        assert httpx.get(f"{restarted.url}/files/{token}").status_code == 200
    finally:
        restarted.stop()
