"""``SamplingClient``: generation and prompt scoring on a Loops sampler.

Which weights serve a request is said by headers (spec 6.2): none for the
base model, ``X-Min-Policy-Version`` for "the live adapter, at least this
version" (clients from ``save_weights_and_get_sampling_client``), and
``X-Checkpoint-Path`` for a pinned checkpoint. A dedicated or local sampler
answers ``/sample`` directly; "not ready" answers (and 408, behind the floor)
are retried until ``ready_timeout``, each retry generating from scratch. A
serverless sampler queues the request (202) and is polled (spec 6.6).

``sample`` and ``compute_logprobs`` have ``*_async`` twins that run natively
on the caller's event loop, for fanning out many rollouts with
``asyncio.gather``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx
from pydantic import RootModel

from loops_runner.sdk import retry
from loops_runner.sdk.completions import parse_completions, sample_body
from loops_runner.sdk.control_plane import ControlPlaneClient
from loops_runner.sdk.deployments import (
    BasetenDeployment,
    DeploymentConfig,
    LocalDeployment,
    ReadinessGate,
    SamplerEndpoint,
    ServerlessDeployment,
    wait_for_sampler,
)
from loops_runner.sdk.errors import (
    LoopsError,
    OperationTimeoutError,
    SamplerTerminatedError,
    SampleTimeoutError,
)
from loops_runner.sdk.http import (
    AFFINITY_HEADER,
    CHECKPOINT_PATH_HEADER,
    IDEMPOTENCY_KEY_HEADER,
    MIN_POLICY_VERSION_HEADER,
    POLICY_VERSION_RESPONSE_HEADER,
    RUN_ID_HEADER,
    SAMPLER_ID_HEADER,
    AsyncClients,
    base_headers,
    make_client,
    rejection,
)
from loops_runner.sdk.operation_protocol import (
    OperationRef,
    PollState,
    operation_id_from,
    poll,
    poll_async,
)
from loops_runner.sdk.tokenizer import get_tokenizer
from loops_runner.sdk.twins import in_thread
from loops_runner.sdk.usage import add_tokens
from loops_runner.wire import ModelInput, SampleResponse, SamplingParams

logger = logging.getLogger("loops_runner.sdk")

CONNECT_TIMEOUT = 10.0
POOL_TIMEOUT = 300.0
CANCEL_TIMEOUT = 5.0
MODELS_CACHE_SECONDS = 5.0
# RL rollouts fan out hundreds of samples; connections open only on demand.
SAMPLER_LIMITS = httpx.Limits(max_connections=2048, max_keepalive_connections=2048,
                              keepalive_expiry=60.0)


class _Completion(RootModel[dict[str, Any]]):
    """A queued sample's result: the completions body of spec 6.3."""


@dataclass(frozen=True)
class _SampleCall:
    """One ``sample`` call: its body and headers (the idempotency key reused by every
    retry), and what reading its answer needs."""

    body: dict[str, Any]
    headers: dict[str, str]
    prompt_ids: list[int]
    include_topk: bool
    max_tokens: int | None

    @property
    def key(self) -> str:
        return self.headers[IDEMPOTENCY_KEY_HEADER]

    def parse(self, payload: Any, version: str | None) -> SampleResponse:
        result = parse_completions(payload, policy_version=version, prompt_ids=self.prompt_ids,
                                   include_topk=self.include_topk, max_tokens=self.max_tokens)
        add_tokens(prompt=len(self.prompt_ids),
                   sampled=sum(len(sequence.tokens) for sequence in result.sequences))
        return result


class SamplingClient:
    """A connection to one sampler, with this client's routing headers."""

    def __init__(
        self,
        *,
        base_model: str,
        endpoint: SamplerEndpoint | str,
        api_key: str | None = None,
        timeout: float | None = None,
        ready_timeout: float | None = 3600.0,
        min_policy_version: int | None = None,
        checkpoint_path: str | None = None,
        run_id: str | None = None,
        session_id: str | None = None,
        control_plane: ControlPlaneClient | None = None,
        base_checkpoint: str | None = None,
    ) -> None:
        self._endpoint = SamplerEndpoint(endpoint.rstrip("/")) if isinstance(endpoint, str) \
            else endpoint
        self._base_model = base_model
        self._api_key = api_key
        self._timeout = timeout
        self._ready_timeout = ready_timeout
        # Version 0 means "nothing published": the base model, so no floor.
        self._min_policy_version = min_policy_version or None
        self._checkpoint_path = checkpoint_path
        self._run_id = run_id
        self._session_id = session_id
        self._control_plane = control_plane
        self._base_checkpoint = base_checkpoint or self._endpoint.base_checkpoint
        self._setup()

    def _setup(self, gate_armed: bool = True) -> None:
        headers = self._static_headers()
        http_timeout = httpx.Timeout(self._timeout, connect=CONNECT_TIMEOUT, pool=POOL_TIMEOUT)
        self._client = make_client(headers=headers, timeout=http_timeout, limits=SAMPLER_LIMITS)
        self._async_clients = AsyncClients(headers=headers, timeout=http_timeout,
                                           limits=SAMPLER_LIMITS)
        self._gate = ReadinessGate(self._control_plane, self._endpoint, self._ready_timeout,
                                   armed=gate_armed)
        self._models_cache: tuple[float, list[dict[str, Any]]] | None = None

    def _static_headers(self) -> dict[str, str]:
        headers = base_headers(self._api_key)
        if self._checkpoint_path is not None:
            headers[CHECKPOINT_PATH_HEADER] = self._checkpoint_path
        if self._run_id is not None:
            headers[RUN_ID_HEADER] = self._run_id
        elif self._checkpoint_path is None and self._endpoint.sampler_id is not None:
            headers[SAMPLER_ID_HEADER] = self._endpoint.sampler_id  # never with X-Run-Id
        if self._min_policy_version is not None and not self._endpoint.queued:
            headers[MIN_POLICY_VERSION_HEADER] = str(self._min_policy_version)
        return headers

    # -- properties ------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> str | None:
        """The ``bt://`` checkpoint this client is pinned to, if any."""
        return self._checkpoint_path

    @property
    def checkpoint_name(self) -> str | None:
        if self._checkpoint_path is None:
            return None
        return self._checkpoint_path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def min_policy_version(self) -> int | None:
        """The adapter version floor this client asks for (None: base model)."""
        return self._min_policy_version

    @property
    def run_id(self) -> str | None:
        return self._run_id

    @property
    def base_url(self) -> str:
        return self._endpoint.base_url

    @property
    def endpoint(self) -> SamplerEndpoint:
        """Where this client samples; a dedicated sampler's model and deployment ids say
        what to deactivate to stop it."""
        return self._endpoint

    def get_base_model(self) -> str:
        return self._base_model

    def get_tokenizer(self) -> Any:
        """The Hugging Face tokenizer of the base model (loaded once, cached)."""
        return get_tokenizer(self._endpoint.served_model or self._base_model,
                             self._base_checkpoint)

    def ensure_ready(self, ready_timeout: float | None = None) -> None:
        """Wait until a dedicated sampler's deployment is ACTIVE (no-op otherwise)."""
        if self._control_plane is not None:
            wait_for_sampler(self._control_plane, self._endpoint,
                             self._ready_timeout if ready_timeout is None else ready_timeout)

    ensure_ready_async = in_thread(ensure_ready)

    def _models(self) -> list[dict[str, Any]]:
        """``GET /v1/models`` (retried while the sampler starts; cached for 5 s)."""
        cached = self._models_cache
        if cached is not None and time.monotonic() - cached[0] < MODELS_CACHE_SECONDS:
            return cached[1]
        url = f"{self._endpoint.base_url}/v1/models"
        outcome = retry.send(lambda: self._client.get(url), retry.MODELS, self._ready_timeout,
                             what="list models")
        if outcome.response.is_error:
            raise rejection(outcome.response, note=outcome.note(), operation="list_models")
        data = outcome.response.json().get("data") or []
        self._models_cache = (time.monotonic(), data)
        return data

    def discover_base_model_name(self) -> str:
        """The sampler's own name for its base model (the ``/v1/models`` entry without parent)."""
        if self._endpoint.queued:
            return self._base_model  # a shared sampler's list is not ours to read
        for model in self._models():
            if model.get("parent") is None:
                return str(model["id"])
        raise LoopsError(f"no base model listed by {self._endpoint.base_url}/v1/models",
                         operation="list_models")

    def discover_adapter_name(self) -> str | None:
        """The live adapter's name (the first entry with a parent), or None."""
        if self._endpoint.queued:
            return self._checkpoint_path
        return next((str(m["id"]) for m in self._models() if m.get("parent") is not None), None)

    # -- sampling ----------------------------------------------------------------------

    def _prepare(self, prompt: ModelInput, num_samples: int,
                 sampling_params: SamplingParams | None, include_prompt_logprobs: bool,
                 topk_prompt_logprobs: int, affinity_key: str | None,
                 include_routed_experts: bool | None) -> _SampleCall:
        if not isinstance(prompt, ModelInput):
            prompt = ModelInput.model_validate(prompt)
        params = sampling_params or SamplingParams()
        if affinity_key == "":
            raise ValueError("affinity_key must not be empty")
        # The queue routes by model and adapter; a dedicated sampler gets neither.
        queued = self._endpoint.queued
        body, prompt_ids = sample_body(prompt, num_samples, params, include_prompt_logprobs,
                                       topk_prompt_logprobs, include_routed_experts,
                                       model=self._base_model if queued else None,
                                       lora=self._checkpoint_path if queued else None)
        # One key per sample() call, reused by its retries.
        headers = {IDEMPOTENCY_KEY_HEADER: str(uuid.uuid4())}
        if affinity_key is not None:
            headers[AFFINITY_HEADER] = affinity_key
        return _SampleCall(body, headers, prompt_ids,
                           include_prompt_logprobs and topk_prompt_logprobs > 0,
                           params.max_tokens)

    def _context(self, key: str | None = None) -> dict[str, str | None]:
        return {"run_id": self._run_id, "operation": "sample", "operation_id": key}

    def _timed_out(self, key: str) -> SampleTimeoutError:
        return SampleTimeoutError(
            f"no response within the client's read timeout of {self._timeout}s; the sampler "
            "may still be generating (not retried, to avoid paying twice); raise timeout= "
            "or lower max_tokens", timeout=self._timeout, **self._context(key))

    def _read(self, outcome: retry.Outcome, call: _SampleCall) -> SampleResponse:
        response = outcome.response
        if response.is_error:
            raise rejection(response, note=outcome.note(), **self._context(call.key))
        if response.status_code != 200:
            raise LoopsError(f"unexpected HTTP {response.status_code} from /sample: "
                             f"{response.text[:300]}", **self._context(call.key))
        return call.parse(response.json(),
                          response.headers.get(POLICY_VERSION_RESPONSE_HEADER))

    def sample(
        self,
        prompt: ModelInput,
        num_samples: int = 1,
        sampling_params: SamplingParams | None = None,
        include_prompt_logprobs: bool = False,
        topk_prompt_logprobs: int = 0,
        *,
        affinity_key: str | None = None,
        include_routed_experts: bool | None = None,
    ) -> SampleResponse:
        """Generate ``num_samples`` completions of ``prompt``.

        ``include_prompt_logprobs`` also scores the prompt (with the top
        ``topk_prompt_logprobs`` alternatives per position). ``affinity_key``
        asks replicated samplers to route related requests to one replica.
        """
        call = self._prepare(prompt, num_samples, sampling_params, include_prompt_logprobs,
                             topk_prompt_logprobs, affinity_key, include_routed_experts)
        self._gate.pass_through()
        url = f"{self._endpoint.base_url}/sample"
        if self._endpoint.queued:
            return call.parse(self._sample_queued(url, call.body, call.headers, call.key), None)
        try:
            outcome = retry.send(
                lambda: self._client.post(url, json=call.body, headers=call.headers),
                retry.SAMPLE, self._ready_timeout, what="sample", context=self._context(call.key))
        except httpx.TimeoutException as exc:
            raise self._timed_out(call.key) from exc
        return self._read(outcome, call)

    async def sample_async(
        self,
        prompt: ModelInput,
        num_samples: int = 1,
        sampling_params: SamplingParams | None = None,
        include_prompt_logprobs: bool = False,
        topk_prompt_logprobs: int = 0,
        *,
        affinity_key: str | None = None,
        include_routed_experts: bool | None = None,
    ) -> SampleResponse:
        call = self._prepare(prompt, num_samples, sampling_params, include_prompt_logprobs,
                             topk_prompt_logprobs, affinity_key, include_routed_experts)
        if self._gate.armed:
            await asyncio.to_thread(self._gate.pass_through)
        url = f"{self._endpoint.base_url}/sample"
        client = self._async_clients.get()
        if self._endpoint.queued:
            return call.parse(await self._sample_queued_async(
                client, url, call.body, call.headers, call.key), None)
        try:
            outcome = await retry.send_async(
                lambda: client.post(url, json=call.body, headers=call.headers), retry.SAMPLE,
                self._ready_timeout, what="sample", context=self._context(call.key))
        except httpx.TimeoutException as exc:
            raise self._timed_out(call.key) from exc
        return self._read(outcome, call)

    # -- the queued (serverless) variant, spec 6.6 ------------------------------------

    def _accepted(self, outcome: retry.Outcome, key: str) -> OperationRef:
        response = outcome.response
        if response.is_error:
            raise rejection(response, note=outcome.note(), **self._context(key))
        if response.status_code != 202:
            raise LoopsError(f"a queued sampler must answer 202, got {response.status_code}",
                             **self._context(key))
        return OperationRef("sample", operation_id_from(response, self._context(key)),
                            self._run_id)

    def _queued_state(self, ref: OperationRef) -> PollState[_Completion]:
        # ``timeout`` bounds the whole wait for the result here.
        return PollState(ref, _Completion, self._timeout, None,
                         transient_statuses=frozenset({502, 504}),
                         retry_after_statuses=frozenset({503}))

    def _cancel_url(self, ref: OperationRef) -> str:
        return f"{self._endpoint.base_url}/operations/{ref.operation_id}/cancel"

    def _sample_queued(self, url: str, body: dict[str, Any], headers: dict[str, str],
                       key: str) -> dict[str, Any]:
        outcome = retry.send(lambda: self._client.post(url, json=body, headers=headers),
                             retry.QUEUED_SAMPLE, self._ready_timeout, what="sample",
                             context=self._context(key))
        ref = self._accepted(outcome, key)
        poll_url = f"{self._endpoint.base_url}/operations/{ref.operation_id}"
        try:
            return poll(self._client, poll_url, self._queued_state(ref)).root
        except OperationTimeoutError as exc:
            try:  # best effort: a still-queued sample is dropped, a running one finishes
                self._client.post(self._cancel_url(ref), timeout=CANCEL_TIMEOUT)
            except httpx.HTTPError as cancel_error:
                logger.info("cancelling sample %s failed: %r", ref.operation_id, cancel_error)
            raise self._timed_out(key) from exc

    async def _sample_queued_async(self, client: httpx.AsyncClient, url: str,
                                   body: dict[str, Any], headers: dict[str, str],
                                   key: str) -> dict[str, Any]:
        outcome = await retry.send_async(lambda: client.post(url, json=body, headers=headers),
                                         retry.QUEUED_SAMPLE, self._ready_timeout,
                                         what="sample", context=self._context(key))
        ref = self._accepted(outcome, key)
        poll_url = f"{self._endpoint.base_url}/operations/{ref.operation_id}"
        try:
            return (await poll_async(client, poll_url, self._queued_state(ref))).root
        except (OperationTimeoutError, asyncio.CancelledError) as exc:
            try:
                await asyncio.shield(client.post(self._cancel_url(ref), timeout=CANCEL_TIMEOUT))
            except (httpx.HTTPError, asyncio.CancelledError) as cancel_error:
                logger.info("cancelling sample %s failed: %r", ref.operation_id, cancel_error)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise self._timed_out(key) from exc

    # -- prompt scoring ------------------------------------------------------------------

    @staticmethod
    def _logprobs_of(prompt: ModelInput, result: SampleResponse) -> list[float | None]:
        if result.prompt_logprobs is None:
            return [None] * prompt.length
        return result.prompt_logprobs

    _SCORE = SamplingParams(max_tokens=1, temperature=0.0)

    def compute_logprobs(self, prompt: ModelInput, *,
                         affinity_key: str | None = None) -> list[float | None]:
        """Log-probability of each prompt token given the ones before (index 0: None)."""
        result = self.sample(prompt, 1, self._SCORE, include_prompt_logprobs=True,
                             topk_prompt_logprobs=0, affinity_key=affinity_key)
        return self._logprobs_of(prompt, result)

    async def compute_logprobs_async(self, prompt: ModelInput, *,
                                     affinity_key: str | None = None) -> list[float | None]:
        result = await self.sample_async(prompt, 1, self._SCORE, include_prompt_logprobs=True,
                                         topk_prompt_logprobs=0, affinity_key=affinity_key)
        return self._logprobs_of(prompt, result)

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        self._client.close()

    async def aclose(self) -> None:
        await self._async_clients.aclose_current()
        self._client.close()

    def __enter__(self) -> SamplingClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    async def __aenter__(self) -> SamplingClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    # Picklable (e.g. for multiprocessing rollouts): connections are rebuilt.
    _STATE = ("_endpoint", "_base_model", "_api_key", "_timeout", "_ready_timeout",
              "_min_policy_version", "_checkpoint_path", "_run_id", "_session_id",
              "_control_plane", "_base_checkpoint")

    def __getstate__(self) -> dict[str, Any]:
        state = {name: getattr(self, name) for name in self._STATE}
        state["_gate_armed"] = self._gate.armed
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        armed = state.pop("_gate_armed", False)
        for name, value in state.items():
            setattr(self, name, value)
        self._setup(gate_armed=armed)

    def __repr__(self) -> str:
        route = (f"checkpoint={self._checkpoint_path}" if self._checkpoint_path
                 else f"min_version={self._min_policy_version}")
        return f"<SamplingClient {self._endpoint.base_url} run={self._run_id} {route}>"


# Names scripts import from the Baseten SDK's ``sampling_client`` module.
__all__ = ["BasetenDeployment", "DeploymentConfig", "LocalDeployment", "SampleTimeoutError",
           "SamplerTerminatedError", "SamplingClient", "ServerlessDeployment"]
