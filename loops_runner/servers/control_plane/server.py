"""``loops-runner serve control-plane``: the local Loops control plane.

Binds 127.0.0.1 unless ``--host`` is given explicitly (then it also listens
for other machines, which is only sensible with an API key: ``--api-key-file``
or ``$LOOPS_CONTROL_PLANE_API_KEY``, never the command line). One control
plane per data home: a lock file refuses a second one, and
``<home>/control_plane.json`` tells launchers (the runner's local backend)
where the running one listens.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from loops_runner.home import loops_home
from loops_runner.servers.common import Refusal, serve_app
from loops_runner.servers.control_plane.auth import ApiKeyMiddleware, configured_key
from loops_runner.servers.control_plane.placement import check_runs_per_trainer
from loops_runner.servers.control_plane.routes import (
    api_error_handler,
    build_router,
    http_error_handler,
    request_validation_handler,
)
from loops_runner.servers.control_plane.service import ControlPlane, Settings
from loops_runner.servers.openapi import install_openapi
from loops_runner.storage.atomic import atomic_write_json
from loops_runner.wire.errors import ErrorBody

logger = logging.getLogger("loops_runner.control_plane")

INFO_FILE = "control_plane.json"
LOCK_FILE = "control_plane.lock"
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def create_app(settings: Settings) -> FastAPI:
    control_plane = ControlPlane(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await control_plane.start()
        url = getattr(app.state, "public_url", None)
        if url:
            atomic_write_json(settings.home / INFO_FILE, {
                "url": url, "pid": os.getpid(), "api_key_required": bool(settings.api_key),
            })
        try:
            yield
        finally:
            logger.info("control plane stopping: stopping its servers")
            await control_plane.close()
            (settings.home / INFO_FILE).unlink(missing_ok=True)

    # The OpenAPI document is served like every route: behind the API key.
    app = FastAPI(title="loops-runner control plane", lifespan=lifespan, docs_url=None,
                  redoc_url=None)
    app.state.control_plane = control_plane
    install_openapi(app, ErrorBody)
    if settings.api_key:
        app.add_middleware(ApiKeyMiddleware, expected=settings.api_key)
    app.add_exception_handler(Refusal, api_error_handler)
    app.add_exception_handler(RequestValidationError, request_validation_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.include_router(build_router(control_plane))
    return app


def _hold_home_lock(home: Path) -> Any:
    """Keep ``<home>/control_plane.lock`` for the life of the process, or exit."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(home / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        info = home / INFO_FILE
        where = info.read_text().strip() if info.exists() else "(no control_plane.json)"
        sys.exit(f"another control plane already uses the data home {home}: {where}")
    return lock


def serve(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                                                   "%(message)s")
    # One line per health probe would drown the log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        api_key = configured_key(Path(args.api_key_file) if args.api_key_file else None)
    except ValueError as exc:
        sys.exit(str(exc))
    home = loops_home(args.home)
    home.mkdir(parents=True, exist_ok=True)
    host = args.host or "127.0.0.1"
    if args.host and args.host not in _LOOPBACK and not api_key:
        logger.warning("listening on %s without an API key: anyone who can reach this port "
                       "can start servers and read checkpoints", args.host)
    if args.idle_timeout <= 0:
        sys.exit("--idle-timeout must be > 0 seconds")
    try:
        check_runs_per_trainer(args.runs_per_trainer, "--runs-per-trainer")
    except ValueError as exc:
        sys.exit(str(exc))
    lock = _hold_home_lock(home)
    settings = Settings(
        home=home, api_key=api_key, idle_timeout=float(args.idle_timeout),
        create_wait=float(os.environ.get("LOOPS_CP_CREATE_WAIT", 240.0)),
        deploy_timeout=float(os.environ.get("LOOPS_CP_DEPLOY_TIMEOUT", 1800.0)),
        runs_per_trainer=args.runs_per_trainer,
    )
    try:
        serve_app(create_app(settings), host, args.port, log_level="warning",
                  graceful_timeout=5.0)
    finally:
        lock.release()
