"""``loops-runner serve sampler``: build the sampler app and run it.

The model loads before the server listens, so the ``LOOPS_SERVER_URL`` line
means "ready to sample". With ``--run-id`` the sampler is that run's paired
sampler: it registers its URL for the trainer's ``/internal/live`` notices
once it accepts connections, and requests without ``X-Run-Id`` follow that run.

Tunables (CLI option if the CLI defines it, else the environment):

* ``LOOPS_SAMPLER_FLOOR_WAIT_S`` (25): how long a request behind its
  ``X-Min-Policy-Version`` is held for a swap before the 408.
* ``LOOPS_SAMPLER_DEFAULT_MAX_TOKENS`` (16): ``max_tokens`` when omitted (spec Q13).
* ``LOOPS_SAMPLER_MAX_BATCH_ROWS``: concurrent sequences (default 64 CPU, 256 GPU).
* ``LOOPS_SAMPLER_PINNED_CACHE`` (4): pinned checkpoints kept loaded.
* ``LOOPS_SAMPLER_THREADS``: CPU threads of the engine (default: 1 for models
  under 100M parameters, else torch's default).
* ``LOOPS_SAMPLER_STREAM_INTERVAL_S`` (0.1): the shortest time between the
  deliveries of streamed tokens (``openai_stream.Mailbox``); 0 = every step.
* ``LOOPS_SAMPLER_STREAM_EVENTS_PER_S`` (100): chunks a second for all open
  streams together; with more streams than ``interval × this`` the time
  between deliveries stretches to ``streams / this``; 0 = no budget.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from loops_runner.home import loops_home
from loops_runner.servers.common import serve_app
from loops_runner.servers.openapi import add_catch_all, install_openapi
from loops_runner.servers.sampler import openai_routes, routes
from loops_runner.servers.sampler.adapters import WeightStore
from loops_runner.servers.sampler.engine import Engine
from loops_runner.servers.sampler.openai_schemas import openai_error
from loops_runner.servers.sampler.openai_stream import Mailbox
from loops_runner.servers.sampler.protocol import Limits, TokenText
from loops_runner.servers.sampler.state import SamplerSettings, SamplerState
from loops_runner.servers.sampler.torch_engine import EngineConfig, TorchEngine
from loops_runner.storage import layout, weight_sync
from loops_runner.wire.errors import VllmErrorBody

logger = logging.getLogger("loops_runner.sampler")


def _env_number(name: str, default: float | None) -> float | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        raise SystemExit(f"{name}={value!r} is not a number") from None


def _pacing(value: float | None, flag: str, env: str) -> float:
    """A stream pacing setting: 0 or more (0 turns it off)."""
    if value is not None and value < 0:
        raise SystemExit(f"{flag} / {env}: {value:g} must be 0 or more")
    return float(value or 0.0)


def settings_from_args(args: argparse.Namespace) -> SamplerSettings:
    def option(name: str, env: str, default: float | None) -> float | None:
        value = getattr(args, name, None)
        return float(value) if value is not None else _env_number(env, default)

    rows = option("max_batch_rows", "LOOPS_SAMPLER_MAX_BATCH_ROWS", None)
    return SamplerSettings(
        base_model=args.base_model,
        home=loops_home(args.home),
        host=args.host,
        port=args.port,
        device=args.device,
        dtype=args.dtype,
        run_id=getattr(args, "run_id", None),
        floor_wait_s=float(option("floor_wait", "LOOPS_SAMPLER_FLOOR_WAIT_S", 25.0) or 0.0),
        default_max_tokens=int(option("default_max_tokens", "LOOPS_SAMPLER_DEFAULT_MAX_TOKENS",
                                      16) or 16),
        max_batch_rows=int(rows) if rows else None,
        pinned_cache_size=int(option("pinned_cache", "LOOPS_SAMPLER_PINNED_CACHE", 4) or 4),
        threads=int(option("threads", "LOOPS_SAMPLER_THREADS", 0) or 0) or None,
        live_names=tuple(getattr(args, "live_names", None) or ()),
        stream_interval_s=_pacing(
            option("stream_interval", "LOOPS_SAMPLER_STREAM_INTERVAL_S", 0.1),
            "--stream-interval", "LOOPS_SAMPLER_STREAM_INTERVAL_S"),
        stream_events_per_s=_pacing(
            option("stream_events_per_s", "LOOPS_SAMPLER_STREAM_EVENTS_PER_S", 100.0),
            "--stream-events-per-s", "LOOPS_SAMPLER_STREAM_EVENTS_PER_S"),
    )


def build_engine(settings: SamplerSettings) -> Engine:
    from loops_runner.models.loading import load_base_model

    loaded = load_base_model(settings.base_model, home=settings.home, device=settings.device,
                             dtype=settings.dtype)
    config = EngineConfig.for_model(loaded.device,
                                    sum(p.numel() for p in loaded.model.parameters()))
    if settings.max_batch_rows:
        config.max_batch_rows = settings.max_batch_rows
    if settings.threads:
        config.threads = settings.threads
    return TorchEngine(loaded, config, model_id=settings.base_model)


def create_app(settings: SamplerSettings, engine: Engine | None = None) -> FastAPI:
    if settings.run_id is not None:
        from loops_runner.wire.names import check_storage_name

        check_storage_name(settings.run_id)
    engine = engine or build_engine(settings)
    default_run = settings.run_id or layout.LOCAL_RUN_ID
    store = WeightStore(engine, settings.home, base_model_id=engine.info.model_id,
                        default_run=default_run, floor_wait_s=settings.floor_wait_s,
                        poll_interval_s=settings.poll_interval_s,
                        pinned_cache_size=settings.pinned_cache_size,
                        live_names=settings.live_names)
    limits = Limits(vocab_size=engine.info.vocab_size,
                    max_context_length=engine.info.max_context_length,
                    default_max_tokens=settings.default_max_tokens,
                    max_n=getattr(getattr(engine, "config", None), "max_batch_rows", 256))
    state = SamplerState(settings=settings, engine=engine, store=store, limits=limits,
                         token_text=TokenText(engine.tokenizer))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        state.mailbox = Mailbox(asyncio.get_running_loop(), settings.stream_interval_s,
                                settings.stream_events_per_s)
        await store.prime()
        state.tasks.append(asyncio.create_task(store.watch(), name="live-watcher"))
        public_url = getattr(app.state, "public_url", None)
        if settings.run_id is not None and public_url:
            state.tasks.append(asyncio.create_task(
                _register_when_listening(settings, public_url), name="register"))
        logger.info("sampler ready: base model %s on %s (%s), default run %s",
                    engine.info.model_id, engine.info.device, engine.info.dtype, default_run)
        try:
            yield
        finally:
            for task in state.tasks:
                task.cancel()
            for task in state.tasks:
                with suppress(asyncio.CancelledError, Exception):
                    await task
            await asyncio.to_thread(engine.shutdown)

    app = FastAPI(title="loops-runner sampler", lifespan=lifespan)
    app.state.sampler = state
    install_openapi(app, VllmErrorBody)
    app.include_router(routes.router)
    app.include_router(openai_routes.router)

    # 404/405 at once, in OpenAI's shape, so OpenAI clients do not retry (they
    # retry 5xx). Safe for the Loops SDK: it retries 404 only on /sample and
    # /v1/models, which always exist here (docs/sampler.md, "Status codes").
    add_catch_all(
        app,
        wrong_method=lambda message, headers: openai_error(
            405, message, None, "method_not_allowed", headers=headers),
        unknown_path=lambda method, path: openai_error(
            404, not_offered_message(method, path), None, "unknown_url"))

    @app.exception_handler(StarletteHTTPException)
    async def routing_refusal(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # What the catch-all cannot match (a path with a newline, say) gets the same shape.
        if exc.status_code == 404:
            return openai_error(404, not_offered_message(request.method,
                                                         request.url.path.lstrip("/")),
                                None, "unknown_url")
        return openai_error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error")
        return openai_error(500, f"internal error: {exc}")

    return app


# OpenAI API families this sampler does not offer, and what to use instead.
_INSTEAD = {
    "v1/responses": "the Responses API is not offered; use /v1/chat/completions (inspect-ai: "
                    "the openai-api/<name>/<model> provider, e.g. --model "
                    "openai-api/loops/default, or openai/<model> with -M responses_api=false)",
    "v1/embeddings": "embeddings are not offered by this sampler",
}


def not_offered_message(method: str, path: str) -> str:
    hint = next((text for prefix, text in _INSTEAD.items() if path.startswith(prefix)), None)
    return (f"Invalid URL ({method} /{path}): this sampler does not offer it"
            + (f"; {hint}" if hint else "") + ". It serves /v1/completions, "
            "/v1/chat/completions, /v1/models and the Loops /sample.")


async def _register_when_listening(settings: SamplerSettings, url: str) -> None:
    """Write paired_sampler.json once our own /health answers (we accept connections)."""
    assert settings.run_id is not None
    async with httpx.AsyncClient(timeout=5.0) as client:
        for _ in range(600):
            try:
                if (await client.get(f"{url}/health")).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    weight_sync.register_paired_sampler(settings.home, settings.run_id, url)
    logger.info("registered as the paired sampler of run %s at %s", settings.run_id, url)


def serve(args: argparse.Namespace, announce: Callable[[str], None] | None = None) -> None:
    """Run the sampler; ``announce(url)`` once it accepts connections."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_from_args(args)
    app = create_app(settings)
    serve_app(app, settings.host, settings.port, announce=announce)

