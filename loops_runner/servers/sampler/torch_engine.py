"""``TorchEngine``: the PyTorch continuous-batching implementation of ``engine.Engine``.

It runs every forward pass on one background thread:

* Requests wait in FIFO order and are admitted while batch rows (slots) and
  the KV-cache budget allow; each of a request's ``n`` samples gets a slot.
* Every scheduler iteration runs at most one prefill chunk (bounded by
  ``prefill_chunk_tokens``, so a long prompt cannot stall running requests for
  long) and one decode step for all running sequences. Sequences join the
  decode batch when their prefill ends and leave it when they finish; their
  slots are reused at once. A long request therefore never starves short ones.
* The prompt is prefilled once per request; its cache is copied to the other
  ``n - 1`` slots.
* Rows using different adapters share a forward (``lora.MultiLoraLinear``).

Why this module is long: it is one scheduler whose steps (admit, prefill,
decode, accept, finish, compact) share the slot table, the KV cache and the
request queues of one engine thread. The parts with a job of their own live
beside it: the KV cache (``kv_cache``), multi-LoRA layers (``lora``), token
sampling (``sampling``), stop strings (``detokenize``) and constraints
(``constraints``).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import traceback
from collections import deque
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from loops_runner.servers.sampler import sampling
from loops_runner.servers.sampler.constraints import RegexConstraint
from loops_runner.servers.sampler.detokenize import StopStrings
from loops_runner.servers.sampler.engine import (
    Engine,
    EngineClosedError,
    EngineInfo,
    FinishReason,
    GenerationJob,
    GenerationOutput,
    PromptPosition,
    SequenceOutput,
    TokenEvent,
)
from loops_runner.servers.sampler.kv_cache import SlotKVCache, attention_masks
from loops_runner.servers.sampler.lora import (
    LoraAdapter,
    LoraBatch,
    load_peft_adapter,
    wrap_targets,
)

logger = logging.getLogger("loops_runner.sampler.engine")

SMALL_MODEL_PARAMETERS = 100_000_000


@dataclass
class EngineConfig:
    max_batch_rows: int = 64
    prefill_chunk_tokens: int = 512
    kv_cache_bytes: int | None = None  # None = automatic
    capacity_step: int = 128  # KV capacity grows in steps of this many positions
    threads: int | None = None  # CPU intra-op threads of the engine thread (None = torch's)

    @classmethod
    def for_model(cls, device: torch.device, parameters: int) -> EngineConfig:
        if device.type == "cuda":
            return cls(max_batch_rows=256, prefill_chunk_tokens=4096)
        # A small model's ops are too small to gain from splitting across cores,
        # and on a busy machine every split op waits for its slowest thread
        # (measured on the tiny model, 2 shared cores: 1.4-1.9 s vs 4-18 s for
        # 32x64 tokens under load; 0.86 vs 0.72 s when idle).
        return cls(threads=1 if parameters < SMALL_MODEL_PARAMETERS else None)


@dataclass(eq=False)
class _Sequence:
    request: _Request
    index: int
    slot: int
    row: sampling.RowSampling
    stops: StopStrings | None
    constraint: RegexConstraint | None
    kv_length: int = 0  # positions already in the cache
    pending: int = -1  # the last sampled token, fed at the next decode step
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[list[tuple[int, float]]] = field(default_factory=list)
    finish: FinishReason | None = None


@dataclass(eq=False)
class _Request:
    job: GenerationJob
    future: Future[GenerationOutput]
    slots: list[int] = field(default_factory=list)
    prefilled: int = 0
    sequences: list[_Sequence] = field(default_factory=list)
    prompt_positions: list[PromptPosition | None] = field(default_factory=list)

    @property
    def adapter(self) -> LoraAdapter | None:
        return self.job.adapter

    @property
    def needed_positions(self) -> int:
        # The last sampled token is never fed back, so it needs no position.
        return len(self.job.prompt) + self.job.spec.max_tokens - 1


def _settle(future: Future[GenerationOutput], *, result: GenerationOutput | None = None,
            exception: BaseException | None = None) -> bool:
    """Resolve a request's future unless the client cancelled it meanwhile.

    The event loop may cancel the future at any moment (client gone), so
    checking ``done()`` first is not enough: the set itself may lose the race.
    """
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)  # type: ignore[arg-type]
    except InvalidStateError:
        return False
    return True


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


class TorchEngine(Engine):
    def __init__(self, loaded: Any, config: EngineConfig | None = None,
                 model_id: str | None = None) -> None:
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.device: torch.device = loaded.device
        self.dtype: torch.dtype = loaded.dtype
        self.config = config or EngineConfig.for_model(
            self.device, sum(p.numel() for p in self.model.parameters()))
        model_config = self.model.config
        self._decoder = getattr(self.model, self.model.base_model_prefix)
        self._lm_head = self.model.get_output_embeddings()
        self._softcap = getattr(model_config, "final_logit_softcapping", None)
        attn = getattr(model_config, "_attn_implementation", "sdpa")
        if attn not in ("sdpa", "eager"):
            # Our per-row masks need a mask-taking attention kernel.
            self.model.set_attn_implementation("sdpa")
            attn = "sdpa"
        self._additive_masks = self.dtype if attn == "eager" else None
        layer_types = getattr(model_config, "layer_types", None) or []
        self._needs_sliding = "sliding_attention" in layer_types
        self._sliding_window = getattr(model_config, "sliding_window", None)

        eos: set[int] = set()
        for source in (getattr(self.model.generation_config, "eos_token_id", None),
                       self.tokenizer.eos_token_id):
            if isinstance(source, int):
                eos.add(source)
            elif isinstance(source, list | tuple):
                eos.update(int(token) for token in source)
        vocab = int(self._lm_head.weight.shape[0])
        self.info = EngineInfo(
            model_id=model_id or loaded.resolved.requested,
            vocab_size=vocab,
            max_context_length=loaded.max_context_length,
            eos_token_ids=frozenset(eos),
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
        )
        self._pad_token = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None \
            else next(iter(eos), 0)

        heads = getattr(model_config, "num_key_value_heads", None) \
            or model_config.num_attention_heads
        head_dim = getattr(model_config, "head_dim", None) \
            or model_config.hidden_size // model_config.num_attention_heads
        element = torch.empty((), dtype=self.dtype).element_size()
        self._bytes_per_position = 2 * model_config.num_hidden_layers * heads * head_dim * element
        self._kv_budget = self.config.kv_cache_bytes or self._default_kv_budget()

        self._lora = LoraBatch()
        self._cache = SlotKVCache(device=self.device, dtype=self.dtype, slots=1, capacity=1)
        self._inbox: queue.Queue[_Request | None] = queue.Queue()
        self._waiting: deque[_Request] = deque()
        self._prefilling: list[_Request] = []
        self._running: list[_Sequence] = []
        self._free_slots: set[int] = set(range(self.config.max_batch_rows))
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._wrap_lock = threading.Lock()
        self._stats: dict[str, Any] = {
            "requests_finished": 0, "requests_failed": 0, "requests_cancelled": 0,
            "generated_tokens": 0, "prefill_tokens": 0, "decode_steps": 0,
            "peak_decode_rows": 0, "peak_running_requests": 0,
        }

    # -- lifecycle ---------------------------------------------------------------

    def _default_kv_budget(self) -> int:
        if self.device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(self.device)
            return int(free * 0.6)
        return 4 << 30

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="sampler-engine", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._stopping = True
        self._inbox.put(None)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def stats(self) -> dict[str, Any]:
        return {
            **self._stats,
            "waiting": len(self._waiting) + self._inbox.qsize(),
            "prefilling": len(self._prefilling),
            "decode_rows": len(self._running),
            "max_batch_rows": self.config.max_batch_rows,
            "threads": self.config.threads or torch.get_num_threads(),
            "kv_cache_bytes": self._cache.nbytes(),
            "kv_cache_budget_bytes": self._kv_budget,
        }

    # -- adapters ----------------------------------------------------------------

    def load_adapter(self, directory: Path, key: str) -> LoraAdapter:
        adapter = load_peft_adapter(directory, self.model, key=key, device=self.device,
                                    dtype=self.dtype)
        with self._wrap_lock:
            wrap_targets(self.model, list(adapter.modules), self._lora)
        return adapter

    # -- submission --------------------------------------------------------------

    def submit(self, job: GenerationJob) -> Future[GenerationOutput]:
        if self._stopping:
            raise EngineClosedError("the engine is shutting down")
        if job.n > self.config.max_batch_rows:
            raise ValueError(f"n={job.n} exceeds the engine's {self.config.max_batch_rows} rows")
        future: Future[GenerationOutput] = Future()
        self._inbox.put(_Request(job=job, future=future))
        return future

    async def generate(self, job: GenerationJob) -> GenerationOutput:
        # Cancelling the awaiting task cancels the concurrent future too, which
        # the engine notices before its next step and frees the request's rows.
        return await asyncio.wrap_future(self.submit(job))

    # -- the scheduler loop ------------------------------------------------------

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        while not self._stopping:
            try:
                self._collect()
                if self._stopping:
                    break
                self._drop_cancelled()
                self._admit()
                if self._prefilling:
                    self._guarded(self._prefill_step, self._prefilling)
                if self._running:
                    self._guarded(self._decode_step, list({s.request for s in self._running}))
                if not (self._waiting or self._prefilling or self._running):
                    self._release_memory()
            except Exception:  # pragma: no cover - a bug in the loop itself
                logger.error("engine loop error:\n%s", traceback.format_exc())
                time.sleep(0.1)
        for request in [*self._waiting, *self._prefilling,
                        *{s.request for s in self._running}]:
            self._fail(request, EngineClosedError("the engine shut down"))

    def _collect(self) -> None:
        idle = not (self._waiting or self._prefilling or self._running)
        try:
            item = self._inbox.get(timeout=0.5) if idle else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            if item is None:
                self._stopping = True
                return
            self._waiting.append(item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _guarded(self, step: Any, requests: list[_Request]) -> None:
        with torch.inference_mode():
            try:
                step()
            except Exception as exc:
                logger.error("generation step failed:\n%s", traceback.format_exc())
                for request in requests:
                    self._fail(request, exc)

    def _drop_cancelled(self) -> None:
        if any(r.future.cancelled() for r in self._waiting):
            self._waiting = deque(r for r in self._waiting if not r.future.cancelled())
        for request in [r for r in self._prefilling if r.future.cancelled()]:
            self._abandon(request)
            self._stats["requests_cancelled"] += 1
        for request in {s.request for s in self._running if s.request.future.cancelled()}:
            self._abandon(request)
            self._stats["requests_cancelled"] += 1

    def _abandon(self, request: _Request) -> None:
        """Take a request out of every queue and give its slots back."""
        if request in self._prefilling:
            self._prefilling.remove(request)
        self._running = [s for s in self._running if s.request is not request]
        self._free_slots.update(request.slots)
        request.slots = []

    def _fail(self, request: _Request, exc: BaseException) -> None:
        self._abandon(request)
        if request in self._waiting:
            self._waiting.remove(request)
        if _settle(request.future, exception=exc):
            self._stats["requests_failed"] += 1

    # -- admission ---------------------------------------------------------------

    def _admit(self) -> None:
        while self._waiting:
            request = self._waiting[0]
            n = request.job.n
            if len(self._free_slots) < n:
                return
            slots = sorted(self._free_slots)[:n]
            active = [*self._prefilling, *{s.request for s in self._running}]
            positions = max([r.needed_positions for r in active]
                            + [request.needed_positions, 1])
            capacity = _round_up(positions + self.config.prefill_chunk_tokens,
                                 self.config.capacity_step)
            used_slots = max([slots[-1], *(s for r in active for s in r.slots)]) + 1
            if active and used_slots * capacity * self._bytes_per_position > self._kv_budget:
                return  # wait for running requests to free memory
            self._waiting.popleft()
            self._free_slots.difference_update(slots)
            request.slots = slots
            self._prefilling.append(request)

    # -- prefill -------------------------------------------------------------------

    def _set_lora(self, adapters: list[LoraAdapter | None]) -> None:
        """Group the rows of the next forward by adapter."""
        distinct = {id(a): a for a in adapters if a is not None}
        if not distinct:
            self._lora.groups = []
        elif len(distinct) == 1 and all(a is not None for a in adapters):
            self._lora.groups = [(next(iter(distinct.values())), None)]
        else:
            groups = []
            for key, adapter in distinct.items():
                rows = [i for i, a in enumerate(adapters) if a is not None and id(a) == key]
                groups.append((adapter, torch.tensor(rows, device=self.device)))
            self._lora.groups = groups

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self._lm_head(hidden).float()
        if self._softcap:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits

    def _forward(self, slots: list[int], input_ids: torch.Tensor, positions: torch.Tensor,
                 kv_length: int) -> torch.Tensor:
        self._cache.bind(slots, positions, kv_length)
        masks = attention_masks(positions, kv_length, sliding_window=self._sliding_window,
                                needs_sliding=self._needs_sliding,
                                additive_dtype=self._additive_masks)
        output = self._decoder(input_ids=input_ids, attention_mask=masks,
                               position_ids=positions, cache=self._cache, use_cache=True)
        return output.last_hidden_state

    def _prefill_step(self) -> None:
        budget = self.config.prefill_chunk_tokens
        chunks: list[tuple[_Request, int, int]] = []
        for request in self._prefilling:
            take = min(len(request.job.prompt) - request.prefilled, budget)
            if take <= 0:
                break
            chunks.append((request, request.prefilled, take))
            budget -= take
        width = max(take for _, _, take in chunks)
        ids = torch.full((len(chunks), width), self._pad_token, dtype=torch.long)
        for row, (request, start, take) in enumerate(chunks):
            ids[row, :take] = torch.tensor(request.job.prompt[start:start + take])
        starts = torch.tensor([start for _, start, _ in chunks])
        positions = (starts[:, None] + torch.arange(width)[None, :]).to(self.device)
        slots = [request.slots[0] for request, _, _ in chunks]
        self._cache.ensure(max(max(r.slots) for r, _, _ in chunks) + 1,
                           _round_up(int(positions.max()) + 1, self.config.capacity_step))
        kv_length = max(start + take for _, start, take in chunks)
        adapters = [request.adapter for request, _, _ in chunks]
        self._set_lora(adapters)
        hidden = self._forward(slots, ids.to(self.device), positions, kv_length)
        self._stats["prefill_tokens"] += sum(take for _, _, take in chunks)

        finished: list[tuple[_Request, torch.Tensor]] = []
        for row, (request, start, take) in enumerate(chunks):
            prompt_length = len(request.job.prompt)
            final = start + take == prompt_length
            request.prefilled = start + take
            self._set_lora([request.adapter])
            if request.job.spec.prompt_logprobs is not None:
                logits = self._logits(hidden[row, :take])
                self._record_prompt_logprobs(request, start, logits)
                if final:
                    finished.append((request, logits[-1]))
            elif final:
                finished.append((request, self._logits(hidden[row, take - 1])))
        if finished:
            self._start_sequences(finished)

    def _record_prompt_logprobs(self, request: _Request, start: int,
                                logits: torch.Tensor) -> None:
        """Position ``start + i`` predicts prompt token ``start + i + 1``."""
        prompt = request.job.prompt
        if not request.prompt_positions:
            request.prompt_positions = [None]
        count = min(logits.shape[0], len(prompt) - start - 1)
        if count <= 0:
            return
        logprobs = torch.log_softmax(logits[:count], dim=-1)
        targets = torch.tensor(prompt[start + 1:start + 1 + count], device=logits.device)
        actual = logprobs.gather(1, targets[:, None])
        ranks = (logprobs > actual).sum(dim=1) + 1
        k = request.job.spec.prompt_logprobs or 0
        if k > 0:
            top_values, top_ids = logprobs.topk(k, dim=-1)
            tops = [tuple(zip(ids, values, strict=True)) for ids, values in
                    zip(top_ids.tolist(), top_values.tolist(), strict=True)]
        else:
            tops = [()] * count
        for token, value, rank, top in zip(targets.tolist(), actual[:, 0].tolist(),
                                           ranks.tolist(), tops, strict=True):
            request.prompt_positions.append(PromptPosition(token, value, rank, top))

    def _start_sequences(self, finished: list[tuple[_Request, torch.Tensor]]) -> None:
        """Prefill done: fork the n sequences and sample their first tokens."""
        rows: list[_Sequence] = []
        row_logits: list[torch.Tensor] = []
        for request, logits in finished:
            self._prefilling.remove(request)
            job, spec = request.job, request.job.spec
            prompt_length = len(job.prompt)
            # Room for every position this request can reach, so decode never grows it.
            self._cache.ensure(max(request.slots) + 1,
                               _round_up(request.needed_positions + 1, self.config.capacity_step))
            self._cache.copy_slot(request.slots[0], request.slots[1:], prompt_length)
            for index, slot in enumerate(request.slots):
                generator = None
                if spec.temperature >= sampling.GREEDY_BELOW:
                    seed = sampling.choice_seed(spec.seed, index)
                    generator = sampling.make_generator(seed, self.device)
                sequence = _Sequence(
                    request=request, index=index, slot=slot,
                    row=sampling.RowSampling(
                        spec.temperature, spec.top_p, spec.top_k, generator,
                        presence_penalty=spec.presence_penalty,
                        frequency_penalty=spec.frequency_penalty,
                        logit_bias=spec.logit_bias),
                    stops=StopStrings(self.tokenizer, spec.stop) if spec.stop else None,
                    constraint=(RegexConstraint(spec.regex, self.tokenizer,
                                                self.info.eos_token_ids)
                                if spec.regex else None),
                    kv_length=prompt_length,
                )
                request.sequences.append(sequence)
                rows.append(sequence)
                row_logits.append(logits)
        self._accept(rows, torch.stack(row_logits))
        self._running.extend(s for s in rows if s.finish is None)
        self._running.sort(key=lambda s: s.slot)
        self._stats["peak_running_requests"] = max(
            self._stats["peak_running_requests"], len({s.request for s in self._running}))

    # -- decode --------------------------------------------------------------------

    def _decode_step(self) -> None:
        rows = self._running
        slots = [s.slot for s in rows]
        ids = torch.tensor([[s.pending] for s in rows], device=self.device)
        positions = torch.tensor([[s.kv_length] for s in rows], device=self.device)
        kv_length = max(s.kv_length for s in rows) + 1
        self._set_lora([s.request.adapter for s in rows])
        hidden = self._forward(slots, ids, positions, kv_length)
        logits = self._logits(hidden[:, -1])
        for sequence in rows:
            sequence.kv_length += 1
        self._stats["decode_steps"] += 1
        self._stats["peak_decode_rows"] = max(self._stats["peak_decode_rows"], len(rows))
        self._accept(rows, logits)
        self._running = [s for s in rows if s.finish is None]
        self._compact()

    def _accept(self, rows: list[_Sequence], logits: torch.Tensor) -> None:
        """Choose each row's next token, record it, and finish rows that are done."""
        adjusted = sampling.penalize(logits, [s.row for s in rows], [s.tokens for s in rows])
        tokens_t, scores = sampling.choose(adjusted, [s.row for s in rows])
        constrained = [i for i, s in enumerate(rows) if s.constraint is not None]
        dead_ends: set[int] = set()
        for i in constrained:
            picked = rows[i].constraint.pick(scores[i])  # type: ignore[union-attr]
            if picked is None:
                dead_ends.add(i)
            else:
                tokens_t[i] = picked
        logprobs = torch.log_softmax(logits, dim=-1)
        chosen = logprobs.gather(1, tokens_t[:, None])[:, 0]
        tokens, values = tokens_t.tolist(), chosen.tolist()
        k = max((s.request.job.spec.logprobs for s in rows), default=0)
        tops: list[list[tuple[int, float]]] | None = None
        if k > 0:
            top_values, top_ids = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
            tops = [list(zip(i, v, strict=True))
                    for i, v in zip(top_ids.tolist(), top_values.tolist(), strict=True)]
        events: dict[_Request, list[TokenEvent]] = {}
        for i, sequence in enumerate(rows):
            if i in dead_ends:
                # Nothing can continue the constrained text: end it here.
                self._finish(sequence, "stop")
                continue
            spec = sequence.request.job.spec
            top = tops[i][: spec.logprobs] if tops is not None and spec.logprobs else None
            if sequence.request.job.listener is not None:
                events.setdefault(sequence.request, []).append(TokenEvent(
                    sequence.index, tokens[i], values[i], tuple(top) if top else None))
            self._append(sequence, tokens[i], values[i], top)
        for request, batch in events.items():
            self._notify(request, batch)

    def _notify(self, request: _Request, events: list[TokenEvent]) -> None:
        """Hand a streaming request its step's tokens (the final answer still
        comes through its future, so a listener that fails loses nothing)."""
        try:
            request.job.listener(events)  # type: ignore[misc]
        except Exception:
            logger.warning("stream listener failed:\n%s", traceback.format_exc())

    def _append(self, sequence: _Sequence, token: int, logprob: float,
                top: list[tuple[int, float]] | None) -> None:
        spec = sequence.request.job.spec
        sequence.tokens.append(token)
        sequence.logprobs.append(logprob)
        if top is not None:
            sequence.top.append(top)
        sequence.pending = token
        self._stats["generated_tokens"] += 1
        if sequence.constraint is not None:
            sequence.constraint.advance(token)
        matched = sequence.stops.push(token) if sequence.stops is not None else False
        if (token in self.info.eos_token_ids and not spec.ignore_eos) \
                or token in spec.stop_token_ids or matched:
            self._finish(sequence, "stop")
        elif len(sequence.tokens) >= spec.max_tokens:
            self._finish(sequence, "length")

    def _finish(self, sequence: _Sequence, reason: FinishReason) -> None:
        sequence.finish = reason
        request = sequence.request
        if sequence.slot in request.slots:
            request.slots.remove(sequence.slot)
            self._free_slots.add(sequence.slot)
        if all(s.finish is not None for s in request.sequences) \
                and len(request.sequences) == request.job.n:
            self._complete(request)

    def _complete(self, request: _Request) -> None:
        outputs = []
        for sequence in request.sequences:
            if sequence.stops is not None:
                text = sequence.stops.text.text
            else:
                text = self.tokenizer.decode(sequence.tokens, skip_special_tokens=True,
                                             clean_up_tokenization_spaces=False)
            outputs.append(SequenceOutput(
                token_ids=sequence.tokens, logprobs=sequence.logprobs,
                finish_reason=sequence.finish or "length", text=text,
                top_logprobs=sequence.top if request.job.spec.logprobs else None))
        prompt_positions = None
        if request.job.spec.prompt_logprobs is not None:
            prompt_positions = request.prompt_positions or [None]
        if _settle(request.future, result=GenerationOutput(outputs, prompt_positions)):
            self._stats["requests_finished"] += 1

    def _compact(self) -> None:
        """Move the highest running rows into lower free slots.

        Keeps the running rows a contiguous block of slots, so attention reads
        the cache through a view rather than a gather.
        """
        if not self._running or not self._free_slots:
            return
        low_free = sorted(self._free_slots)
        moved = False
        for sequence in sorted(self._running, key=lambda s: s.slot, reverse=True):
            if not low_free or low_free[0] > sequence.slot:
                break
            target = low_free.pop(0)
            self._cache.move_slot(sequence.slot, target, sequence.kv_length)
            request = sequence.request
            request.slots[request.slots.index(sequence.slot)] = target
            self._free_slots.discard(target)
            self._free_slots.add(sequence.slot)
            sequence.slot = target
            moved = True
        if moved:
            self._running.sort(key=lambda s: s.slot)

    def _release_memory(self) -> None:
        if self._cache.nbytes() > 256 << 20:
            self._cache.reset(1, 1)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
