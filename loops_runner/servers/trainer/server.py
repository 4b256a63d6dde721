"""``loops-runner serve trainer``: the LoRA trainer behind the Loops operation protocol.

The server starts listening at once; the base model loads in the background
(``/health`` answers 503 until it is ready, and operations accepted meanwhile
wait for it). A failed load stops the server with exit code 1.
"""

from __future__ import annotations

import argparse
import logging
import sys

from loops_runner.home import loops_home
from loops_runner.servers.common import serve_app
from loops_runner.servers.trainer.routes import create_app
from loops_runner.servers.trainer.service import TrainerOptions, TrainerService

logger = logging.getLogger(__name__)


def build_service(args: argparse.Namespace) -> TrainerService:
    options = TrainerOptions(base_model=args.base_model, home=loops_home(args.home),
                             device=args.device, dtype=args.dtype)
    return TrainerService(options)


def serve(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    service = build_service(args)
    app = create_app(service)
    def on_exit() -> None:
        # Called from uvicorn's signal handling, before it waits for open
        # requests: held polls and new submits answer 503 from here on.
        if service.loop is not None:
            service.store.begin_shutdown_threadsafe(service.loop)

    serve_app(app, args.host, args.port, on_exit=on_exit, graceful_timeout=10.0)
    if service.load_error is not None:
        sys.exit(1)
