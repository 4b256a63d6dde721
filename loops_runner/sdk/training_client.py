"""``TrainingClient``: drives one run on a Loops trainer.

Every long operation is submitted on the caller's thread (so a refused
request raises at the call) and returns an ``APIFuture`` at once; the outcome
is fetched by ``.result()`` or ``await``. Many operations may be in flight
(pipelining). A turnstile keeps this client's issue order even when calls
come from several threads or tasks, and ``seq_id`` numbers the submits in
that order (spec 4.2). Each method has an ``*_async`` twin returning the same
future without blocking the event loop.

A client built by ``ServiceClient.local(...)`` has no run: operations that
name a checkpoint (save, load, publish) and everything that needs the control
plane are refused before anything is sent (spec 8).

Why this module is long: it is the one public class of the official
``TrainingClient`` surface, each method with its ``*_async`` twin. The parts
with a job of their own live beside it (``chunking`` splits and uploads
oversized requests, ``custom_loss``, ``publishing``, ``checkpoints``,
``operations``; ``twins`` generates the async twins that only run their plain
method in a thread); what remains here is the thin per-method glue.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TypeVar

from pydantic import BaseModel

from loops_runner.sdk import checkpoint_downloads, chunking, custom_loss, publishing
from loops_runner.sdk import heartbeat as heartbeat_module
from loops_runner.sdk.control_plane import ControlPlaneClient, Reconnect
from loops_runner.sdk.deployments import SamplerEndpoint, TrainerEndpoint, health_url
from loops_runner.sdk.errors import UnsupportedOperationError
from loops_runner.sdk.futures import (
    APIFuture,
    ForwardBackwardFuture,
    GatheredFuture,
    MappedFuture,
)
from loops_runner.sdk.http import (
    RUN_ID_HEADER,
    base_headers,
    raise_for_status,
)
from loops_runner.sdk.operation_protocol import OperationRef, TrainerConnection
from loops_runner.sdk.ordering import Turnstile
from loops_runner.sdk.sampling_client import SamplingClient
from loops_runner.sdk.tokenizer import get_tokenizer
from loops_runner.sdk.twins import in_thread
from loops_runner.sdk.types import CheckpointDownload, GetInfoResponse, ModelData
from loops_runner.sdk.usage import add_tokens
from loops_runner.sdk.wandb_logger import WandbLogger
from loops_runner.wire import (
    AdamParams,
    Checkpoint,
    CheckpointFilesResponse,
    CheckpointTarget,
    CreateSamplerRequest,
    Datum,
    ForwardBackwardOutput,
    InitTrainerServerRequest,
    InitTrainerServerResponse,
    LoadStateRequest,
    LoadWeightsResponse,
    OperationRequest,
    OptimStepRequest,
    OptimStepResponse,
    SaveStateRequest,
    SaveWeightsForSamplerRequest,
    SaveWeightsForSamplerResponse,
    SaveWeightsResponse,
    WandbConfig,
)
from loops_runner.wire.names import check_storage_name
from loops_runner.wire.paths import bt_path, parse_bt_path
from loops_runner.wire.training import LOSS_FNS, MAX_TOP_K_LOGPROBS

# Names scripts import from the Baseten SDK's ``training_client`` module.
CustomLossFnV1 = custom_loss.CustomLossFn
__all__ = ["APIFuture", "CustomLossFnV1", "ForwardBackwardFuture", "TrainingClient"]

logger = logging.getLogger("loops_runner.sdk")

R = TypeVar("R", bound=BaseModel)


@dataclass
class _ForwardPlan:
    """A forward/forward_backward request, encoded and split to fit the size cap."""

    op: str
    fields: dict[str, Any]
    encoded: list[bytes]
    chunks: list[range]


def _fields(request: OperationRequest) -> dict[str, Any]:
    """An operation's fields from its wire model, validated as the trainer will.

    Fields the caller did not set are not sent; ``seq_id``, ``run_id`` and
    ``model`` are added at submit. forward/forward_backward are the exception:
    their data is encoded once per datum and spliced into a body template
    (``chunking``), so a large batch is not dumped twice.
    """
    # Only top-level fields are filtered: nested models (AdamParams) go whole.
    chosen = request.model_fields_set - {"seq_id", "run_id", "model"}
    return request.model_dump(mode="json", include=chosen)


def _needs_run(what: str) -> UnsupportedOperationError:
    return UnsupportedOperationError(
        "this client has no run (it talks to a trainer without a control plane, e.g. "
        "ServiceClient.local(...)), and checkpoints are named by run: "
        "bt://loops:<run>/...; create the client with "
        "ServiceClient(base_url=...).create_lora_training_client(...)", operation=what)


def _needs_control_plane(what: str, run_id: str | None) -> UnsupportedOperationError:
    return UnsupportedOperationError(
        "this needs the Loops control plane, and this client has none "
        "(ServiceClient.local(...) or a hand-built TrainingClient without api_base_url)",
        operation=what, run_id=run_id)


class TrainingClient:
    """A connected trainer run; see the module docstring.

    Usually made by ``ServiceClient.create_lora_training_client``. Built by
    hand it talks to ``trainer_url`` directly; ``run_id`` then names the run
    (checkpoints and publishing need one) and ``api_base_url`` the control
    plane (checkpoint listing, downloads, pinned samplers). ``seed`` makes the
    fresh adapter reproducible (sent in ``init_trainer_server``).
    ``control_plane_reconnect`` is ``ServiceClient``'s ``reconnect`` hook: the
    trainer itself is reached directly, only control-plane calls reconnect.
    """

    def __init__(
        self,
        trainer_url: str | TrainerEndpoint,
        *,
        lora_rank: int,
        base_model: str,
        run_id: str | None = None,
        api_key: str | None = None,
        timeout: float | None = 600.0,
        ready_timeout: float | None = 600.0,
        sampler_timeout: float | None = None,
        api_base_url: str | None = None,
        session_id: str | None = None,
        paired_sampling_deployment: SamplerEndpoint | str | None = None,
        wandb_config: WandbConfig | None = None,
        max_seq_len: int | None = None,
        base_checkpoint: str | None = None,
        seed: int | None = None,
        heartbeat_interval: float = heartbeat_module.INTERVAL,
        sampler_num_replicas: int | None = None,
        control_plane_reconnect: Reconnect | None = None,
    ) -> None:
        self._endpoint = (TrainerEndpoint(trainer_url.rstrip("/"))
                          if isinstance(trainer_url, str) else trainer_url)
        self._base_model = base_model
        self._lora_rank = int(lora_rank)
        self._run_id = run_id
        self._api_key = api_key
        self._timeout = timeout
        self._ready_timeout = ready_timeout
        self._sampler_timeout = sampler_timeout
        self._session_id = session_id
        self._max_seq_len = max_seq_len
        self._base_checkpoint = base_checkpoint
        self._seed = seed
        self._sampler_num_replicas = sampler_num_replicas
        self._control_plane = ControlPlaneClient(
            api_base_url, api_key, reconnect=control_plane_reconnect) if api_base_url else None
        if isinstance(paired_sampling_deployment, str):
            paired_sampling_deployment = SamplerEndpoint(paired_sampling_deployment.rstrip("/"))
        self._paired: SamplerEndpoint | None = paired_sampling_deployment
        self._paired_lock = threading.Lock()
        self._last_published: int | None = None

        headers = base_headers(api_key)
        if run_id is not None:
            headers[RUN_ID_HEADER] = run_id
        self._headers = headers
        self._conn = TrainerConnection(self._endpoint.base_url, headers=headers,
                                       timeout=timeout, ready_timeout=ready_timeout)
        self._turnstile = Turnstile()
        self._seq = 0
        self._seq_lock = threading.Lock()
        self._closed = False
        self._heartbeat: heartbeat_module.Heartbeat | None = None
        self._wandb: WandbLogger | None = None
        try:
            if wandb_config is not None:
                self._wandb = WandbLogger(wandb_config, run_config={
                    "base_model": base_model, "lora_rank": self._lora_rank, "run_id": run_id})
            # A new client starts from a fresh adapter (seq_id 1, spec 4.2).
            self.init_trainer_server(self._lora_rank).result()
        except BaseException:
            self.close()
            raise
        self._heartbeat = heartbeat_module.Heartbeat(
            health_url(self._endpoint.base_url, base_model), headers, heartbeat_interval)
        self._heartbeat.start()

    # -- properties ------------------------------------------------------------------

    @property
    def run_id(self) -> str | None:
        """The run this client trains (None for ``ServiceClient.local`` clients)."""
        return self._run_id

    @property
    def base_model(self) -> str:
        return self._base_model

    @property
    def base_checkpoint(self) -> str | None:
        return self._base_checkpoint

    @property
    def session_id(self) -> str | None:
        return self._session_id

    @property
    def policy_version(self) -> int:
        """Optimizer steps applied so far on the trainer (``GET /policy_version``)."""
        if self._endpoint.kind == "serverless":
            raise NotImplementedError(
                "policy_version is unavailable on serverless trainers; use "
                "save_weights_for_sampler(...).result().version")
        response = self._conn.client.get(f"{self._endpoint.base_url}/policy_version")
        if response.status_code == 501:
            raise NotImplementedError("this trainer does not report policy_version")
        raise_for_status(response, operation="policy_version", run_id=self._run_id)
        return int(response.json()["policy_version"])

    def get_info(self) -> GetInfoResponse:
        """The model and adapter shape of this run (known locally, no server call)."""
        return GetInfoResponse(
            model_data=ModelData(model_name=self._base_model,
                                 tokenizer_id=self._base_checkpoint or self._base_model),
            model_name=self._base_model, is_lora=True, lora_rank=self._lora_rank,
            max_seq_len=self._max_seq_len)

    def get_tokenizer(self) -> Any:
        """The Hugging Face tokenizer of the base model (loaded once, cached)."""
        return get_tokenizer(self._base_model, self._base_checkpoint)

    def health(self) -> None:
        """Raise unless the trainer reports itself ready for this model."""
        response = self._conn.client.get(health_url(self._endpoint.base_url, self._base_model))
        raise_for_status(response, operation="health", run_id=self._run_id)

    # -- submitting ------------------------------------------------------------------

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise UnsupportedOperationError("the client is closed", operation=what,
                                            run_id=self._run_id)

    def _seq_ids(self, count: int) -> range:
        # Only the holder of the current turn calls this, so seq_ids grow in
        # acceptance order; a chunked request gets a contiguous range.
        with self._seq_lock:
            start = self._seq + 1
            self._seq += count
            return range(start, start + count)

    def _body(self, fields: dict[str, Any], seq_id: int) -> bytes:
        return chunking.dumps({**fields, "seq_id": seq_id, "run_id": self._run_id,
                               "model": self._base_model})

    def _submit(self, op: str, fields: dict[str, Any]) -> OperationRef:
        return self._conn.submit(op, self._body(fields, self._seq_ids(1)[0]),
                                 run_id=self._run_id)

    async def _submit_async(self, op: str, fields: dict[str, Any]) -> OperationRef:
        return await self._conn.submit_async(op, self._body(fields, self._seq_ids(1)[0]),
                                             run_id=self._run_id)

    def _issue(self, op: str, fields: dict[str, Any], result_type: type[R]) -> APIFuture[R]:
        self._check_open(op)
        with self._turnstile.turn(self._turnstile.take()):
            ref = self._submit(op, fields)
        return APIFuture(self._conn, ref, result_type)

    async def _issue_async(self, op: str, fields: dict[str, Any],
                           result_type: type[R]) -> APIFuture[R]:
        self._check_open(op)
        async with self._turnstile.turn_async(self._turnstile.take()):
            ref = await self._submit_async(op, fields)
        return APIFuture(self._conn, ref, result_type)

    # -- forward / forward_backward ------------------------------------------------

    def _plan(self, op: str, data: Sequence[Datum], loss_fn: str,
              loss_fn_config: dict[str, Any] | None, top_k_logprobs: int) -> _ForwardPlan:
        self._check_open(op)
        if loss_fn not in LOSS_FNS:
            raise ValueError(f"loss_fn {loss_fn!r} is not one of {', '.join(LOSS_FNS)}")
        if not 0 <= top_k_logprobs <= MAX_TOP_K_LOGPROBS:
            raise ValueError(f"top_k_logprobs must be in 0..{MAX_TOP_K_LOGPROBS}, "
                             f"got {top_k_logprobs}")
        if loss_fn_config is not None and not isinstance(loss_fn_config, dict):
            raise TypeError("loss_fn_config must be a dict or None")
        rows = [d if isinstance(d, Datum) else Datum.model_validate(d) for d in data]
        fields = {"loss_fn": loss_fn, "loss_fn_config": loss_fn_config,
                  "top_k_logprobs": top_k_logprobs}
        encoded = chunking.encode_data(rows)
        if op == "forward_backward":
            add_tokens(trained=sum(row.model_input.length for row in rows))
        # The largest seq_id text bounds the real overhead from above.
        widest = chunking.BodyTemplate.build(
            {**fields, "seq_id": 2**53, "run_id": self._run_id, "model": self._base_model})
        chunks = chunking.plan_chunks(
            [len(e) for e in encoded], overhead=widest.overhead,
            cap=self._max_request_bytes, group_size=chunking.ROW_GROUP_SIZES.get(loss_fn, 1))
        return _ForwardPlan(op, fields, encoded, chunks)

    # Class attribute so tests (and unusual gateways) can lower it per client.
    _max_request_bytes = chunking.MAX_REQUEST_BYTES

    def _chunk_bodies(self, plan: _ForwardPlan) -> list[bytes]:
        bodies = []
        for chunk, seq_id in zip(plan.chunks, self._seq_ids(len(plan.chunks)), strict=True):
            template = chunking.BodyTemplate.build(
                {**plan.fields, "seq_id": seq_id, "run_id": self._run_id,
                 "model": self._base_model})
            bodies.append(template.render([plan.encoded[i] for i in chunk]))
        return bodies

    def _forward_future(self, plan: _ForwardPlan,
                        refs: list[OperationRef]) -> APIFuture[ForwardBackwardOutput] | Any:
        futures = [APIFuture(self._conn, ref, ForwardBackwardOutput) for ref in refs]
        if len(futures) == 1:
            future: Any = futures[0]
        else:
            counts = [len(chunk) for chunk in plan.chunks]
            future = GatheredFuture(futures, lambda results: chunking.merge_outputs(
                results, counts))
        if plan.op == "forward_backward" and self._wandb is not None:
            future.add_done_callback(self._wandb.log_forward_backward)
        return future

    def _chunk_failure(self, plan: _ForwardPlan, errors: list[BaseException],
                       accepted: int) -> BaseException:
        first = errors[0]
        if accepted and plan.op == "forward_backward":
            logger.error("%d of %d chunks of a forward_backward were accepted before another "
                         "was refused; their gradients are already accumulated on the "
                         "trainer", accepted, len(plan.chunks))
        return first

    def _send_plan(self, plan: _ForwardPlan) -> Any:
        """Submit every chunk (caller holds the turn) and return the combined future."""
        refs, errors = chunking.upload(
            lambda body: self._conn.submit(plan.op, body, run_id=self._run_id),
            self._chunk_bodies(plan))
        if errors:
            raise self._chunk_failure(plan, errors, len(refs))
        return self._forward_future(plan, refs)

    async def _send_plan_async(self, plan: _ForwardPlan) -> Any:
        refs, errors = await chunking.upload_async(
            lambda body: self._conn.submit_async(plan.op, body, run_id=self._run_id),
            self._chunk_bodies(plan))
        if errors:
            raise self._chunk_failure(plan, errors, len(refs))
        return self._forward_future(plan, refs)

    def _run_plan(self, plan: _ForwardPlan) -> Any:
        with self._turnstile.turn(self._turnstile.take()):
            return self._send_plan(plan)

    async def _run_plan_async(self, plan: _ForwardPlan) -> Any:
        async with self._turnstile.turn_async(self._turnstile.take()):
            return await self._send_plan_async(plan)

    def forward_backward(self, data: Sequence[Datum], loss_fn: str = "cross_entropy",
                         loss_fn_config: dict[str, Any] | None = None,
                         top_k_logprobs: int = 0) -> APIFuture[ForwardBackwardOutput]:
        """Accumulate the gradient of ``loss_fn`` on ``data``; applied by ``optim_step``.

        Requests over the 24 MiB cap are split into several operations and
        their results merged; the returned future looks the same either way.
        """
        return self._run_plan(self._plan("forward_backward", data, loss_fn, loss_fn_config,
                                         top_k_logprobs))

    async def forward_backward_async(self, data: Sequence[Datum],
                                     loss_fn: str = "cross_entropy",
                                     loss_fn_config: dict[str, Any] | None = None,
                                     top_k_logprobs: int = 0) -> APIFuture[ForwardBackwardOutput]:
        return await self._run_plan_async(self._plan("forward_backward", data, loss_fn,
                                                     loss_fn_config, top_k_logprobs))

    def forward(self, data: Sequence[Datum], loss_fn: str = "cross_entropy",
                loss_fn_config: dict[str, Any] | None = None,
                top_k_logprobs: int = 0) -> APIFuture[ForwardBackwardOutput]:
        """The same outputs as ``forward_backward`` without touching the gradient."""
        return self._run_plan(self._plan("forward", data, loss_fn, loss_fn_config,
                                         top_k_logprobs))

    async def forward_async(self, data: Sequence[Datum], loss_fn: str = "cross_entropy",
                            loss_fn_config: dict[str, Any] | None = None,
                            top_k_logprobs: int = 0) -> APIFuture[ForwardBackwardOutput]:
        return await self._run_plan_async(self._plan("forward", data, loss_fn, loss_fn_config,
                                                     top_k_logprobs))

    # -- custom loss -------------------------------------------------------------------

    def _custom_plans(self, data: Sequence[Datum],
                      loss_type_input: str) -> tuple[list[Datum], _ForwardPlan]:
        if loss_type_input != "logprobs":
            raise ValueError(f"loss_type_input must be 'logprobs', got {loss_type_input!r}")
        rows = [d if isinstance(d, Datum) else Datum.model_validate(d) for d in data]
        plan = self._plan("forward", custom_loss.forward_data(rows), custom_loss.SURROGATE_LOSS,
                          custom_loss.SURROGATE_CONFIG, 0)
        return rows, plan

    def _custom_backward(self, rows: list[Datum], loss_fn: custom_loss.CustomLossFn,
                         result: ForwardBackwardOutput) -> tuple[_ForwardPlan, dict[str, float]]:
        logprobs = custom_loss.logprob_tensors(result, len(rows))
        surrogate, metrics = custom_loss.surrogate_data(rows, loss_fn, logprobs)
        plan = self._plan("forward_backward", surrogate, custom_loss.SURROGATE_LOSS,
                          custom_loss.SURROGATE_CONFIG, 0)
        return plan, metrics

    @staticmethod
    def _with_metrics(future: Any, metrics: dict[str, float]) -> Any:
        def add(result: ForwardBackwardOutput) -> ForwardBackwardOutput:
            return result.model_copy(update={"metrics": {**result.metrics, **metrics}})

        return MappedFuture(future, add)

    def forward_backward_custom(self, data: Sequence[Datum], loss_fn: custom_loss.CustomLossFn,
                                *, loss_type_input: Literal["logprobs"] = "logprobs") -> Any:
        """Accumulate the gradient of a PyTorch loss over per-token logprobs.

        ``loss_fn(data, logprobs)`` gets one logprob tensor per datum (shaped
        like its ``target_tokens``, masked positions 0) and returns
        ``(scalar_loss, metrics)``. Blocks until the logprob pass is back; the
        gradient pass is returned as a future. No token normalization is
        applied to the result (spec 4.8).
        """
        rows, forward_plan = self._custom_plans(data, loss_type_input)
        tickets = self._turnstile.take(2)  # both passes keep this call's place in line
        forward_turn, backward_turn = range(tickets.start, tickets.start + 1), \
            range(tickets.start + 1, tickets.stop)
        try:
            with self._turnstile.turn(forward_turn):
                forward_future = self._send_plan(forward_plan)
            backward_plan, metrics = self._custom_backward(rows, loss_fn,
                                                           forward_future.result())
            with self._turnstile.turn(backward_turn):
                backward = self._send_plan(backward_plan)
        finally:
            self._turnstile.release(backward_turn)
        return self._with_metrics(backward, metrics)

    async def forward_backward_custom_async(
            self, data: Sequence[Datum], loss_fn: custom_loss.CustomLossFn,
            *, loss_type_input: Literal["logprobs"] = "logprobs") -> Any:
        rows, forward_plan = self._custom_plans(data, loss_type_input)
        tickets = self._turnstile.take(2)
        forward_turn, backward_turn = range(tickets.start, tickets.start + 1), \
            range(tickets.start + 1, tickets.stop)
        try:
            async with self._turnstile.turn_async(forward_turn):
                forward_future = await self._send_plan_async(forward_plan)
            backward_plan, metrics = self._custom_backward(
                rows, loss_fn, await forward_future.result_async())
            async with self._turnstile.turn_async(backward_turn):
                backward = await self._send_plan_async(backward_plan)
        finally:
            self._turnstile.release(backward_turn)
        return self._with_metrics(backward, metrics)

    # -- optimizer, state --------------------------------------------------------------

    def _optim_fields(self, adam_params: AdamParams) -> dict[str, Any]:
        if not isinstance(adam_params, AdamParams):
            adam_params = AdamParams.model_validate(adam_params)
        return _fields(OptimStepRequest(adam_params=adam_params))

    def _log_optim(self, future: APIFuture[OptimStepResponse]) -> APIFuture[OptimStepResponse]:
        if self._wandb is not None:
            future.add_done_callback(self._wandb.log_optim_step)
        return future

    def optim_step(self, adam_params: AdamParams) -> APIFuture[OptimStepResponse]:
        """Apply one AdamW step from the accumulated gradient, then clear it."""
        fields = self._optim_fields(adam_params)
        return self._log_optim(self._issue("optim_step", fields, OptimStepResponse))

    async def optim_step_async(self, adam_params: AdamParams) -> APIFuture[OptimStepResponse]:
        fields = self._optim_fields(adam_params)
        return self._log_optim(await self._issue_async("optim_step", fields, OptimStepResponse))

    def _init_fields(self, lora_rank: int) -> dict[str, Any]:
        # The seed is only sent when asked for: it makes the adapter's init
        # reproducible per run on trainers that read it (the spec's body has none).
        seed = {} if self._seed is None else {"seed": self._seed}
        return _fields(InitTrainerServerRequest(lora_rank=int(lora_rank),
                                                base_model=self._base_model, **seed))

    def init_trainer_server(self, lora_rank: int) -> APIFuture[InitTrainerServerResponse]:
        """Reset this run to a fresh adapter of ``lora_rank`` (the constructor does this)."""
        return self._issue("init_trainer_server", self._init_fields(lora_rank),
                           InitTrainerServerResponse)

    async def init_trainer_server_async(
            self, lora_rank: int) -> APIFuture[InitTrainerServerResponse]:
        return await self._issue_async("init_trainer_server", self._init_fields(lora_rank),
                                       InitTrainerServerResponse)

    def _named_fields(self, what: str, name: str, ttl_seconds: int | None,
                      ) -> dict[str, Any]:
        if self._run_id is None:
            raise _needs_run(what)
        check_storage_name(name)
        if ttl_seconds is not None and ttl_seconds < 1:
            raise ValueError(f"ttl_seconds must be >= 1 or None, got {ttl_seconds}")
        if what == "save_state":
            return _fields(SaveStateRequest(name=name, ttl_seconds=ttl_seconds))
        return _fields(SaveWeightsForSamplerRequest(name=name, ttl_seconds=ttl_seconds,
                                                    bump_version=False))

    def save_state(self, name: str,
                   ttl_seconds: int | None = None) -> APIFuture[SaveWeightsResponse]:
        """Save a resumable checkpoint (adapter, optimizer, step) as ``weights/<name>``."""
        return self._issue("save_state", self._named_fields("save_state", name, ttl_seconds),
                           SaveWeightsResponse)

    async def save_state_async(self, name: str,
                               ttl_seconds: int | None = None) -> APIFuture[SaveWeightsResponse]:
        return await self._issue_async(
            "save_state", self._named_fields("save_state", name, ttl_seconds),
            SaveWeightsResponse)

    def _load_fields(self, what: str, path: str) -> dict[str, Any]:
        if self._run_id is None:
            raise _needs_run(what)
        if not path:
            raise ValueError("path must name a checkpoint, e.g. bt://loops:<run>/weights/<name>")
        return _fields(LoadStateRequest(path=path))

    def load_state(self, path: str) -> APIFuture[LoadWeightsResponse]:
        """Load adapter weights from ``path``; the optimizer starts fresh (step 0)."""
        return self._issue("load_state", self._load_fields("load_state", path),
                           LoadWeightsResponse)

    async def load_state_async(self, path: str) -> APIFuture[LoadWeightsResponse]:
        return await self._issue_async("load_state", self._load_fields("load_state", path),
                                       LoadWeightsResponse)

    def load_state_with_optimizer(self, path: str) -> APIFuture[LoadWeightsResponse]:
        """Load adapter weights, optimizer moments and step from ``path``."""
        return self._issue("load_state_with_optimizer",
                           self._load_fields("load_state_with_optimizer", path),
                           LoadWeightsResponse)

    async def load_state_with_optimizer_async(self, path: str) -> APIFuture[LoadWeightsResponse]:
        return await self._issue_async("load_state_with_optimizer",
                                       self._load_fields("load_state_with_optimizer", path),
                                       LoadWeightsResponse)

    # -- publishing for samplers ---------------------------------------------------------

    def save_weights_for_sampler(
            self, name: str = "default", ttl_seconds: int | None = None,
    ) -> APIFuture[SaveWeightsForSamplerResponse]:
        """Write a sampler-ready adapter as ``sampler_weights/<name>`` (no hot-swap)."""
        fields = self._named_fields("save_weights_for_sampler", name, ttl_seconds)
        return self._issue("save_weights_for_sampler", fields, SaveWeightsForSamplerResponse)

    async def save_weights_for_sampler_async(
            self, name: str = "default", ttl_seconds: int | None = None,
    ) -> APIFuture[SaveWeightsForSamplerResponse]:
        fields = self._named_fields("save_weights_for_sampler", name, ttl_seconds)
        return await self._issue_async("save_weights_for_sampler", fields,
                                       SaveWeightsForSamplerResponse)

    def _ensure_paired_sampler(self, what: str) -> SamplerEndpoint:
        """This run's paired sampler, created through the control plane on first use."""
        with self._paired_lock:
            if self._paired is not None:
                return self._paired
            if self._control_plane is None or self._run_id is None:
                raise _needs_control_plane(what, self._run_id)
            logger.info("creating the paired sampler of run %s", self._run_id)
            info = self._control_plane.create_sampler(CreateSamplerRequest(
                session_id=self._session_id, run_id=self._run_id,
                num_replicas=self._sampler_num_replicas))
            self._paired = SamplerEndpoint.from_info(info)
            return self._paired

    def _publish_fields(self, name: str, sampler: SamplerEndpoint) -> dict[str, Any]:
        check_storage_name(name)
        if sampler.queued:
            # A shared serverless sampler caches adapters by name: publish each
            # version under a name of its own.
            name = f"{name}-{uuid.uuid4().hex}"
        # No ttl_seconds key on this shape (spec 4.5).
        return _fields(SaveWeightsForSamplerRequest(name=name, bump_version=True))

    def _sampler_weights_path(self, response: SaveWeightsForSamplerResponse, name: str) -> str:
        assert self._run_id is not None
        try:
            answered = parse_bt_path(response.path)
        except ValueError:
            answered = None
        if answered is not None and answered.run_id == self._run_id \
                and answered.kind == "sampler_weights":
            return str(answered)
        return bt_path(self._run_id, "sampler_weights", name)

    def _published_client(self, response: SaveWeightsForSamplerResponse, name: str,
                          sampler: SamplerEndpoint) -> SamplingClient:
        version = int(response.version)
        if version > 0:
            self._last_published = version
        pinned = self._sampler_weights_path(response, name) \
            if sampler.queued and version > 0 else None
        return self._sampling_client(sampler, floor=None if sampler.queued else version,
                                     checkpoint_path=pinned)

    def _sampling_client(self, sampler: SamplerEndpoint, *, floor: int | None,
                         checkpoint_path: str | None) -> SamplingClient:
        return SamplingClient(
            base_model=self._base_model, endpoint=sampler, api_key=self._api_key,
            timeout=self._sampler_timeout, ready_timeout=self._ready_timeout,
            min_policy_version=floor, checkpoint_path=checkpoint_path, run_id=self._run_id,
            session_id=self._session_id, control_plane=self._control_plane,
            base_checkpoint=self._base_checkpoint)

    def save_weights_and_get_sampling_client(self, name: str = "default") -> SamplingClient:
        """Publish the current adapter to the paired sampler and sample from it.

        Waits until the sampler serves the new version; the returned client
        asks for at least that version (``X-Min-Policy-Version``). Version 0
        (nothing trained yet) returns a base-model client.
        """
        what = "save_weights_and_get_sampling_client"
        if self._run_id is None:
            raise _needs_run(what)
        sampler = self._ensure_paired_sampler(what)
        fields = self._publish_fields(name, sampler)
        response = self._issue("save_weights_for_sampler", fields,
                               SaveWeightsForSamplerResponse).result()
        if response.version > 0 and not sampler.queued:
            publishing.wait_for_version(sampler.base_url, self._headers, response.version,
                                        self._run_id)
        return self._published_client(response, fields["name"], sampler)

    async def save_weights_and_get_sampling_client_async(
            self, name: str = "default") -> SamplingClient:
        what = "save_weights_and_get_sampling_client"
        if self._run_id is None:
            raise _needs_run(what)
        sampler = await asyncio.to_thread(self._ensure_paired_sampler, what)
        fields = self._publish_fields(name, sampler)
        future = await self._issue_async("save_weights_for_sampler", fields,
                                         SaveWeightsForSamplerResponse)
        response = await future.result_async()
        if response.version > 0 and not sampler.queued:
            await publishing.wait_for_version_async(sampler.base_url, self._headers,
                                                    response.version, self._run_id)
        return self._published_client(response, fields["name"], sampler)

    def create_sampling_client(self, model_path: str) -> SamplingClient:
        """Sample the checkpoint ``model_path`` until newer live weights are published.

        The client pins ``X-Checkpoint-Path`` with a floor one above the last
        version this client published, so the next publish takes over.
        """
        what = "create_sampling_client"
        if self._control_plane is None:
            raise _needs_control_plane(what, self._run_id)
        sampler = self._ensure_paired_sampler(what)
        self._control_plane.validate_checkpoint(model_path, self._run_id)
        floor = None if sampler.queued else (self._last_published or 0) + 1
        return self._sampling_client(sampler, floor=floor, checkpoint_path=model_path)

    create_sampling_client_async = in_thread(create_sampling_client)

    # -- checkpoints through the control plane -----------------------------------------

    def _checkpoint_api(self, what: str) -> ControlPlaneClient:
        if self._control_plane is None:
            raise _needs_control_plane(what, self._run_id)
        return self._control_plane

    def list_checkpoints(self) -> list[Checkpoint]:
        """This run's checkpoints, from the control plane's registry."""
        control_plane = self._checkpoint_api("list_checkpoints")
        if self._run_id is None:
            raise _needs_run("list_checkpoints")
        return control_plane.list_checkpoints(self._run_id)

    list_checkpoints_async = in_thread(list_checkpoints)

    def get_checkpoint_archive_url(
            self, checkpoint_id: str | None = None, page_size: int = 1000, page_token: int = 0,
            *, name: str | None = None,
            target: CheckpointTarget | str | None = None) -> CheckpointFilesResponse:
        """Signed URLs of a checkpoint's files (by id, or by ``name`` in this run)."""
        control_plane = self._checkpoint_api("get_checkpoint_archive_url")
        resolved = checkpoint_downloads.resolve_id(control_plane, checkpoint_id, name, self._run_id,
                                          target)
        return checkpoint_downloads.files_page(control_plane, resolved, page_size, page_token)

    get_checkpoint_archive_url_async = in_thread(get_checkpoint_archive_url)

    def download_checkpoint(self, checkpoint_id: str | None = None, *, dest_dir: str,
                            name: str | None = None,
                            target: CheckpointTarget | str | None = None) -> CheckpointDownload:
        """Write a checkpoint's files into the empty directory ``dest_dir``."""
        control_plane = self._checkpoint_api("download_checkpoint")
        resolved = checkpoint_downloads.resolve_id(control_plane, checkpoint_id, name, self._run_id,
                                          target)
        return checkpoint_downloads.download(control_plane, resolved, dest_dir)

    download_checkpoint_async = in_thread(download_checkpoint)

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Stop the heartbeat, finish the W&B run and close connections (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._heartbeat is not None:
            self._heartbeat.stop()
        if self._wandb is not None:
            try:
                self._wandb.finish()
            except Exception as exc:  # a broken W&B must not hide the caller's error
                logger.warning("finishing the W&B run failed: %r", exc)
        self._conn.close()

    async def aclose(self) -> None:
        if self._closed:
            return
        await self._conn.async_clients.aclose_current()
        await asyncio.to_thread(self.close)

    def __enter__(self) -> TrainingClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    async def __aenter__(self) -> TrainingClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return (f"<TrainingClient run={self._run_id} model={self._base_model} "
                f"rank={self._lora_rank} trainer={self._endpoint.base_url}>")

