"""What the sampler's routes share: the engine, the weight store, limits, settings."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request

from loops_runner.servers.sampler.adapters import WeightStore
from loops_runner.servers.sampler.engine import Engine, GenerationJob, GenerationOutput
from loops_runner.servers.sampler.openai_stream import Mailbox
from loops_runner.servers.sampler.protocol import Limits, TokenText


@dataclass(frozen=True)
class SamplerSettings:
    base_model: str
    home: Path
    host: str = "127.0.0.1"
    port: int = 0
    device: str = "auto"
    dtype: str = "auto"
    run_id: str | None = None  # paired sampler: register and follow this run
    floor_wait_s: float = 25.0  # hold a request behind its version floor this long
    default_max_tokens: int = 16  # vLLM's completions default (spec Q13)
    max_batch_rows: int | None = None  # None: engine default for the device
    pinned_cache_size: int = 4
    poll_interval_s: float = 0.2
    threads: int | None = None  # CPU threads of the engine (None: automatic)
    # Streams get their tokens in deliveries at least this far apart, stretched so
    # that all open streams get at most stream_events_per_s chunks a second
    # together (openai_stream.Mailbox; 0 = no budget).
    stream_interval_s: float = 0.1
    stream_events_per_s: float = 100.0
    # Names of the default run's live adapter; the first is listed (``serve-checkpoint``).
    live_names: tuple[str, ...] = ()


@dataclass
class SamplerState:
    settings: SamplerSettings
    engine: Engine
    store: WeightStore
    limits: Limits
    token_text: TokenText
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    started: int = field(default_factory=lambda: int(time.time()))
    mailbox: Mailbox | None = None  # set once the event loop runs (lifespan)

    def model_card(self, model_id: str, parent: str | None) -> dict[str, Any]:
        """A model object of ``/v1/models`` (OpenAI's fields plus vLLM's)."""
        return {"id": model_id, "object": "model", "created": self.started,
                "owned_by": "loops-runner", "root": model_id, "parent": parent,
                "max_model_len": self.limits.max_context_length}


def sampler_state(request: Request) -> SamplerState:
    return request.app.state.sampler


class ClientGoneError(Exception):
    """The client hung up before its completion was ready."""


async def generate_while_connected(request: Request, engine: Engine, job: GenerationJob,
                                   check_every_s: float = 1.0) -> GenerationOutput:
    """Run ``job``; if the client disconnects first, drop it from the batch.

    The SDK retries a timed-out sample from scratch, so generation nobody
    waits for would only take rows from the requests that are still wanted.
    """
    task = asyncio.ensure_future(engine.generate(job))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=check_every_s)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ClientGoneError
    finally:
        if not task.done():
            task.cancel()
