"""The trainer's server-side state: model loading, run slots, op acceptance.

Sits between the routes (HTTP parsing) and the engine (math). For each
operation it parses and validates the body (off the event loop), checks the
run, and hands the operation store a job that calls the engine on the single
engine thread. Each run's jobs form their own group there: a run's operations
run in the order they were accepted (spec 4.2), and runs sharing this trainer
take turns, so one run's burst does not starve another. The base model loads
as the engine thread's first job, so operations accepted while it loads
simply queue behind it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from loops_runner.models.registry import canonical_model_id
from loops_runner.servers.common import Refusal, format_validation_errors
from loops_runner.servers.operation_store import Accepted, OperationStore
from loops_runner.servers.trainer.validation import ModelLimits, prepare_forward
from loops_runner.storage import layout
from loops_runner.wire.names import check_storage_name
from loops_runner.wire.paths import parse_checkpoint_path
from loops_runner.wire.training import (
    ForwardBackwardRequest,
    InitTrainerServerRequest,
    LoadStateRequest,
    OperationRequest,
    OptimStepRequest,
    SaveStateRequest,
    SaveWeightsForSamplerRequest,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Bodies up to this size are parsed on the event loop: a small JSON parses in
# tens of microseconds, while handing it to a worker thread and back costs
# two thread wake-ups and GIL hand-offs (milliseconds on a busy machine, the
# largest server-side cost of a small operation). Larger bodies still go to a
# thread so a big batch never stalls other requests.
INLINE_PARSE_BYTES = 64 * 1024
LIMITS_WAIT_S = 20.0  # a submit that needs the model waits this long for it, then 408 (retried)
TTL_SWEEP_INTERVAL_S = 60.0


@dataclass(frozen=True)
class TrainerOptions:
    base_model: str
    home: Path
    device: str = "auto"
    dtype: str = "auto"


def _reject(detail: str, reason: str = "INVALID_REQUEST", status: int = 422) -> Refusal:
    return Refusal(status, detail, reason)


async def _off_loop(body: bytes, work: Callable[[], T]) -> T:
    """Run ``work`` (parsing ``body``) inline when the body is small, else in a thread."""
    if len(body) <= INLINE_PARSE_BYTES:
        return work()
    return await asyncio.to_thread(work)


def _parse(model: type[BaseModel], body: bytes) -> Any:
    if not body.strip():
        raise _reject("the request body is empty; a JSON object is required")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _reject(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise _reject(f"the request body must be a JSON object, got {type(payload).__name__}")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise _reject(format_validation_errors(exc.errors())) from exc


class TrainerService:
    def __init__(self, options: TrainerOptions, store: OperationStore | None = None) -> None:
        self.options = options
        self.home = options.home
        self.requested_model = options.base_model
        self.base_model_id = canonical_model_id(options.base_model, options.home)
        self.store = store or OperationStore()
        self.engine: Any = None  # TrainerEngine once loaded (typed loosely: torch-free import)
        self.load_error: BaseException | None = None
        self.known_runs: set[str] = set()
        self._loaded: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._loaded = asyncio.Event()
        self._tasks.append(asyncio.create_task(self._load()))
        self._tasks.append(asyncio.create_task(self._sweep_forever()))

    async def _load(self) -> None:
        assert self._loaded is not None
        try:
            self.engine = await self.store.call(self._load_engine)
            logger.info("base model %s loaded; serving", self.base_model_id)
        except Exception as exc:
            self.load_error = exc
            logger.exception("loading base model %r failed; shutting down", self.requested_model)
            os.kill(os.getpid(), signal.SIGTERM)
        finally:
            self._loaded.set()

    def _load_engine(self) -> Any:
        from loops_runner.models.loading import load_base_model
        from loops_runner.servers.trainer.engine import TrainerEngine

        loaded = load_base_model(self.requested_model, home=self.home,
                                 device=self.options.device, dtype=self.options.dtype)
        return TrainerEngine(loaded, self.home, base_model_id=self.base_model_id)

    async def _sweep_forever(self) -> None:
        from loops_runner.servers.trainer.checkpoint_folders import sweep_expired

        while True:
            await asyncio.sleep(TTL_SWEEP_INTERVAL_S)
            if self.known_runs and not self.store.shutting_down:
                try:
                    await self.store.call(lambda: sweep_expired(self.home, sorted(self.known_runs)))
                except Exception:  # never let the janitor take the server down
                    logger.exception("checkpoint TTL sweep failed")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.store.begin_shutdown()
        self.store.close()

    @property
    def ready(self) -> bool:
        return self.engine is not None

    def serves(self, name: str) -> bool:
        if name in (self.requested_model, self.base_model_id):
            return True
        try:
            return canonical_model_id(name, self.home) == self.base_model_id
        except ValueError:
            return False

    async def limits(self) -> ModelLimits:
        """The loaded model's limits; waits while it loads (408 after a while: retried)."""
        assert self._loaded is not None
        if not self._loaded.is_set():
            try:
                await asyncio.wait_for(self._loaded.wait(), LIMITS_WAIT_S)
            except TimeoutError:
                raise _reject("the base model is still loading; retry", "LOADING", 408) from None
        if self.engine is None:
            raise _reject(f"the base model failed to load: {self.load_error}", "LOAD_FAILED", 503)
        return self.engine.limits  # type: ignore[no-any-return]

    def _engine(self) -> Any:
        if self.engine is None:
            raise RuntimeError(f"the base model {self.requested_model!r} failed to load: "
                               f"{self.load_error}")
        return self.engine

    # -- acceptance ----------------------------------------------------------------------

    def resolve_run(self, body_run: str | None, header_run: str | None) -> str:
        if body_run is not None and header_run is not None and body_run != header_run:
            raise _reject(f"run_id {body_run!r} in the body does not match X-Run-Id "
                          f"{header_run!r}", "RUN_ID_MISMATCH")
        run_id = body_run if body_run is not None else header_run
        if run_id is None or run_id == "":
            return layout.LOCAL_RUN_ID
        try:
            return check_storage_name(run_id)
        except ValueError as exc:
            raise _reject(f"run_id: {exc}", "INVALID_RUN_ID") from exc

    def require_run(self, run_id: str) -> None:
        if run_id not in self.known_runs:
            raise _reject(f"unknown run {run_id!r} on this trainer: send init_trainer_server "
                          "for it first", "UNKNOWN_RUN")

    async def prepare(self, op: str, body: bytes, header_run: str | None) -> Accepted:
        handler = self._handlers()[op]
        return await handler(body, header_run)

    def _handlers(self) -> dict[str, Callable[[bytes, str | None], Awaitable[Accepted]]]:
        return {
            "init_trainer_server": self._init,
            "forward": self._forward,
            "forward_backward": self._forward_backward,
            "optim_step": self._optim_step,
            "save_state": self._save_state,
            "save_weights_for_sampler": self._save_weights_for_sampler,
            "load_state": self._load_state,
            "load_state_with_optimizer": self._load_state_with_optimizer,
        }

    async def _parsed(self, model: type[BaseModel], body: bytes, header_run: str | None,
                      *, need_run: bool = True) -> tuple[Any, str]:
        request: OperationRequest = await _off_loop(body, lambda: _parse(model, body))
        run_id = self.resolve_run(request.run_id, header_run)
        if need_run:
            self.require_run(run_id)
        return request, run_id

    async def _init(self, body: bytes, header_run: str | None) -> Accepted:
        request, run_id = await self._parsed(InitTrainerServerRequest, body, header_run,
                                             need_run=False)
        assert isinstance(request, InitTrainerServerRequest)
        if not self.serves(request.base_model):
            raise _reject(f"base_model {request.base_model!r} is not served by this trainer "
                          f"(it serves {self.requested_model!r} = {self.base_model_id})",
                          "MODEL_NOT_SERVED")
        rank, seed = request.lora_rank, request.seed

        def accepted() -> None:
            self.known_runs.add(run_id)
            # seq_id is for logs only (spec 4.2): 1 on init marks a new client.
            logger.info("run %s: init_trainer_server (rank %d, seq_id %s)", run_id, rank,
                        request.seq_id)

        return Accepted(job=lambda: self._engine().init_run(run_id, rank, seed),
                        on_accept=accepted, group=run_id)

    async def _forward_like(self, body: bytes, header_run: str | None, backward: bool
                            ) -> Accepted:
        limits = await self.limits()

        def parse_and_validate() -> tuple[Any, str]:
            request = _parse(ForwardBackwardRequest, body)
            run_id = self.resolve_run(request.run_id, header_run)
            self.require_run(run_id)
            # prepare_forward raises InvalidRequest, itself a 422 Refusal.
            return prepare_forward(request, limits), run_id

        batch, run_id = await _off_loop(body, parse_and_validate)
        return Accepted(job=lambda: self._engine().forward_backward(run_id, batch,
                                                                    backward=backward),
                        group=run_id)

    async def _forward(self, body: bytes, header_run: str | None) -> Accepted:
        return await self._forward_like(body, header_run, backward=False)

    async def _forward_backward(self, body: bytes, header_run: str | None) -> Accepted:
        return await self._forward_like(body, header_run, backward=True)

    async def _optim_step(self, body: bytes, header_run: str | None) -> Accepted:
        request, run_id = await self._parsed(OptimStepRequest, body, header_run)
        params = request.adam_params
        return Accepted(job=lambda: self._engine().optim_step(run_id, params), group=run_id)

    async def _save_state(self, body: bytes, header_run: str | None) -> Accepted:
        request, run_id = await self._parsed(SaveStateRequest, body, header_run)
        name, ttl = request.name, request.ttl_seconds
        return Accepted(job=lambda: self._engine().save_state(run_id, name, ttl),
                        group=run_id)

    async def _save_weights_for_sampler(self, body: bytes, header_run: str | None) -> Accepted:
        request, run_id = await self._parsed(SaveWeightsForSamplerRequest, body, header_run)
        name, ttl, bump = request.name, request.ttl_seconds, request.bump_version
        return Accepted(job=lambda: self._engine().save_weights_for_sampler(run_id, name, ttl,
                                                                            bump),
                        group=run_id)

    async def _load_like(self, body: bytes, header_run: str | None, with_optimizer: bool
                         ) -> Accepted:
        request, run_id = await self._parsed(LoadStateRequest, body, header_run)
        path = request.path.strip()
        check_checkpoint_path(path)
        return Accepted(job=lambda: self._engine().load_state(run_id, path,
                                                              with_optimizer=with_optimizer),
                        group=run_id)

    async def _load_state(self, body: bytes, header_run: str | None) -> Accepted:
        return await self._load_like(body, header_run, with_optimizer=False)

    async def _load_state_with_optimizer(self, body: bytes, header_run: str | None) -> Accepted:
        return await self._load_like(body, header_run, with_optimizer=True)

    # -- plain reads ---------------------------------------------------------------------

    def policy_version(self, header_run: str | None) -> int:
        run_id = self.resolve_run(None, header_run)
        self.require_run(run_id)
        engine = self.engine
        if engine is None or run_id not in engine.runs:
            return 0  # init accepted but not yet executed
        return int(engine.runs[run_id].step)


def check_checkpoint_path(path: str) -> None:
    """Syntax only: the folder may not exist yet (a save queued just before this load)."""
    if path.startswith("bt://"):
        try:
            parse_checkpoint_path(path)
        except ValueError as exc:
            raise _reject(f"path: {exc}", "INVALID_PATH") from exc
    elif "://" in path and not path.startswith("file://"):
        raise _reject(f"path {path!r}: this trainer reads bt://loops:<run>/weights/<name>, "
                      "file:// and local paths only", "INVALID_PATH")
