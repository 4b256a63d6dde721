"""Security checks: every control-plane route behind its key, signed file URLs, loopback binds.

The route list is read from the control-plane app itself, so a route added
later without protection fails here instead of shipping open.
"""

from __future__ import annotations

import contextlib
import re
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from loops_runner.servers.control_plane.files import FileRef, FileSigner, load_or_create_secret
from loops_runner.servers.control_plane.server import create_app
from loops_runner.servers.control_plane.service import Settings
from tests.control_plane.helpers import write_checkpoint
from tests.reliability.conftest import API_KEY

FILES_ROUTE = "/files/{token}"


def app_routes(app: Any) -> list[tuple[str, str]]:
    """(method, path template) of every HTTP route the app serves, included routers too."""
    found: list[tuple[str, str]] = []

    def walk(routes: list[Any]) -> None:
        for route in routes:
            if hasattr(route, "original_router"):  # FastAPI's included-router wrapper
                walk(route.original_router.routes)
            elif getattr(route, "methods", None):
                found.extend((method, route.path) for method in sorted(route.methods))

    walk(app.router.routes)
    return sorted(set(found))


def concrete(path: str) -> str:
    """A template with every ``{param}`` (and ``{param:path}``) filled with a dummy id."""
    return re.sub(r"\{[^}]+\}", "x-1", path)


def test_every_control_plane_route_refuses_missing_and_wrong_keys(
        keyed_control_plane, tmp_path: Path) -> None:
    routes = app_routes(create_app(Settings(home=tmp_path, api_key=API_KEY)))
    paths = {path for _, path in routes}
    # The enumeration sees the whole API (a broken walk would pass vacuously).
    assert {"/v1/loops/trainers", "/v1/loops/sessions", "/v1/loops/checkpoints",
            "/openapi.json", FILES_ROUTE, "/health"} <= paths, paths
    assert len(routes) >= 30
    open_routes = []
    with httpx.Client(base_url=keyed_control_plane.url, timeout=30.0) as client:
        for method, path in routes:
            if path == FILES_ROUTE:
                continue  # its credential is the URL's signature (below)
            for headers in ({}, {"Authorization": "Api-Key wrong-key"},
                            {"Authorization": f"Bearer {API_KEY}x"},
                            {"Authorization": API_KEY}):
                response = client.request(method, concrete(path), headers=headers)
                if response.status_code != 401 or (method != "HEAD" and (
                        response.json()["details"]["reason"] != "UNAUTHENTICATED")):
                    open_routes.append(f"{method} {path} {headers}: {response.status_code}")
        # The right key opens them (a route that 401s for everyone would pass above).
        ok = client.get("/v1/loops/capabilities",
                        headers={"Authorization": f"Api-Key {API_KEY}"})
        assert ok.status_code == 200
    assert not open_routes, "\n".join(open_routes)


def test_signed_file_urls_refuse_expired_tampered_and_escaping_tokens(
        keyed_control_plane) -> None:
    home = keyed_control_plane.home
    write_checkpoint(home, "run-sec", "weights", "ok", base_model="tiny",
                     files={"adapter_model.safetensors": b"weights", "step.json": b"{}"})
    signer = FileSigner(load_or_create_secret(home))  # the server's own key
    url = keyed_control_plane.url + "/files/"

    def get(token: str) -> httpx.Response:
        return httpx.get(url + token, timeout=30.0)  # no headers: as the SDK downloads

    good, _ = signer.sign(FileRef("run-sec", "weights", "ok", "step.json"))
    assert get(good).status_code == 200 and get(good).content == b"{}"

    refusals: dict[str, str] = {}
    refusals["expired"] = signer.sign(FileRef("run-sec", "weights", "ok", "step.json"),
                                      expires_at=1)[0]
    payload, mac = good.split(".")
    flipped = "A" if payload[3] != "A" else "B"
    refusals["tampered payload"] = f"{payload[:3]}{flipped}{payload[4:]}.{mac}"
    refusals["tampered signature"] = f"{payload}.{mac[:-2]}{'AA' if mac[-2:] != 'AA' else 'BB'}"
    refusals["foreign key"] = FileSigner(b"k" * 32).sign(
        FileRef("run-sec", "weights", "ok", "step.json"))[0]
    # Correctly signed, yet naming a file outside the checkpoint folder.
    for name, relative in (("dotdot", "../../../control_plane.secret"),
                           ("absolute", "/etc/passwd"), ("backslash", "..\\x")):
        refusals[name] = signer.sign(FileRef("run-sec", "weights", "ok", relative))[0]
    refusals["run escape"] = signer.sign(FileRef("..", "weights", "ok", "step.json"))[0]
    folder = home / "runs" / "run-sec" / "weights" / "ok"
    (folder / "leak").symlink_to(home / "control_plane.secret")
    refusals["symlink"] = signer.sign(FileRef("run-sec", "weights", "ok", "leak"))[0]

    for case, token in refusals.items():
        response = get(token)
        assert response.status_code == 403, (case, response.status_code, response.text[:200])
        assert response.json()["details"]["reason"] == "FORBIDDEN", case
        assert response.content != load_or_create_secret(home)


@pytest.mark.parametrize("server", ["trainer_server", "sampler_server", "keyed_control_plane"])
def test_servers_listen_on_loopback_only(server: str, request: pytest.FixtureRequest) -> None:
    """Started without --host, each server is reachable on 127.0.0.1 and nowhere else."""
    url = request.getfixturevalue(server).url
    host, port = urlsplit(url).hostname, urlsplit(url).port
    assert host == "127.0.0.1"
    assert port is not None
    for address in _non_loopback_addresses():
        with socket.socket() as probe:
            probe.settimeout(2.0)
            assert probe.connect_ex((address, port)) != 0, f"{server} answers on {address}"


def _non_loopback_addresses() -> list[str]:
    """This machine's own IPv4 addresses other than 127.x (may be empty in a sandbox)."""
    addresses = set()
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.connect(("10.255.255.255", 1))  # no packet is sent; picks the outgoing address
        addresses.add(udp.getsockname()[0])
    with contextlib.suppress(OSError):
        addresses.update(info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None,
                                                                   socket.AF_INET))
    return sorted(a for a in addresses if not a.startswith("127."))


def test_cli_defaults_bind_loopback() -> None:
    from loops_runner.cli import build_parser

    parser = build_parser()
    for server in ("trainer", "sampler"):
        args = parser.parse_args(["serve", server, "--base-model", "tiny"])
        assert args.host == "127.0.0.1", server
    args = parser.parse_args(["serve", "control-plane"])
    assert args.host is None  # serve() turns None into 127.0.0.1 (and warns for others)
