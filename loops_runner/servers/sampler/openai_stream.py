"""Server-sent events for the OpenAI routes (``stream=true``).

Tokens leave as the engine produces them, not at the end: each job's
listener hands the engine's per-step events to the event loop (through the
``Mailbox``, which delivers at most every ``stream_interval_s``, 100 ms by
default, stretched so that all open streams together get at most
``stream_events_per_s`` chunks a second, 100 by default), and every delivery
sends each stream one chunk with everything that arrived since the last one (a
slow reader gets fewer, larger chunks, never a backlog of tiny ones).

The job's final output stays the source of truth: when it arrives, any token
the events have not delivered yet is sent from it, and each choice's text is
completed to exactly the non-streamed text (``TextStream``), so the
concatenated stream always equals the non-streamed answer for the same seed.

A client that goes away cancels the response (Starlette listens for the
disconnect), which cancels the engine jobs, and the engine frees their rows
before its next step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.responses import StreamingResponse
from starlette.types import Send

from loops_runner.servers.sampler.detokenize import TextStream
from loops_runner.servers.sampler.engine import (
    Engine,
    GenerationJob,
    GenerationOutput,
    SequenceOutput,
    TokenEvent,
)

logger = logging.getLogger("loops_runner.sampler.stream")

DONE_LINE = "data: [DONE]\n\n"
DONE_BYTES = DONE_LINE.encode()
# One encoder for every chunk: ``json.dumps`` with any non-default argument
# builds a new ``JSONEncoder`` per call, which cost more than the encoding.
_encode = json.JSONEncoder(separators=(",", ":")).encode


@dataclass
class _Step:
    job: int
    events: list[TokenEvent]


@dataclass
class _Finished:
    job: int
    task: asyncio.Future[GenerationOutput]


class Mailbox:
    """Hands the engine thread's events to the event loop, paced.

    The engine and the event loop share one interpreter lock (and, on a small
    machine, the cores), so every moment the loop spends on a stream is taken
    from the engine's step. Waking the loop per stream per step (a
    ``call_soon_threadsafe`` each) and writing one event per token made 32
    streams cost the engine half its throughput here. So posts collect here and
    are delivered together, one wake-up for all streams: at once when the last
    delivery is older than the pace, else when it is that old. A stream's first
    tokens are urgent and leave without delay (time to first token is not
    paced); later ones leave in chunks of whatever the engine made meanwhile.

    The pace is ``interval_s``, stretched to ``open streams / events_per_s``
    when that is longer: each delivery costs a socket write per open stream
    (and the reader a read), so the cost of streaming grows with the number of
    streams times deliveries per second; the budget holds it flat (32 streams
    at 100 events/s: a chunk every 0.32 s; up to 10 streams: every 0.1 s).
    ``events_per_s`` 0 = no budget.

    At most one timed delivery is pending at any moment: an urgent delivery
    cancels it (it carried its posts already). Two timers alive at once would
    each re-arm after its own delivery and halve the pace for good, which
    doubled the events of 32 streams.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, interval_s: float,
                 events_per_s: float = 0.0) -> None:
        self._loop = loop
        self.interval_s = interval_s
        self.events_per_s = events_per_s
        self.open_streams = 0  # the loop's thread only (``follow``)
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Queue[Any], Any]] = []
        # One wake-up of the loop in flight at a time (and one more for an
        # urgent post that arrives while a paced one is in flight).
        self._woken = False
        self._woken_urgent = False
        self._timer: asyncio.TimerHandle | None = None  # the loop's thread only
        self._last = float("-inf")

    def pace(self) -> float:
        """Seconds between two deliveries, for the streams open now."""
        if self.events_per_s <= 0:
            return self.interval_s
        return max(self.interval_s, self.open_streams / self.events_per_s)

    def post(self, inbox: asyncio.Queue[Any], item: Any, urgent: bool = False) -> None:
        """Called from the engine's thread."""
        with self._lock:
            self._pending.append((inbox, item))
            if self._woken_urgent or (self._woken and not urgent):
                return
            self._woken = True
            self._woken_urgent = urgent
        self._loop.call_soon_threadsafe(self._arm, urgent)

    def _arm(self, urgent: bool) -> None:
        if not urgent and self._timer is not None:
            return  # the pending timed delivery takes these posts too
        delay = 0.0 if urgent else self._last + self.pace() - self._loop.time()
        if delay > 0:
            self._timer = self._loop.call_later(delay, self._deliver)
        else:
            self._deliver()

    def _deliver(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        with self._lock:
            pending, self._pending = self._pending, []
            self._woken = self._woken_urgent = False
        if not pending:
            return
        self._last = self._loop.time()
        for inbox, item in pending:
            inbox.put_nowait(item)


async def follow(engine: Engine, jobs: list[GenerationJob], mailbox: Mailbox,
                 ) -> AsyncIterator[list[_Step | _Finished]]:
    """Run ``jobs`` on ``engine``; yield what happened since the last yield.

    Leaving the iteration early (the client went away) cancels every job.
    """
    inbox: asyncio.Queue[_Step | _Finished] = asyncio.Queue()

    def listener(job: int) -> Callable[[list[TokenEvent]], None]:
        started = False

        def hand_over(events: list[TokenEvent]) -> None:
            nonlocal started
            mailbox.post(inbox, _Step(job, events), urgent=not started)
            started = True

        return hand_over

    for index, job in enumerate(jobs):
        job.listener = listener(index)
    mailbox.open_streams += 1
    tasks = [asyncio.ensure_future(engine.generate(job)) for job in jobs]
    for index, task in enumerate(tasks):
        task.add_done_callback(lambda done, job=index: inbox.put_nowait(_Finished(job, done)))
    remaining = len(tasks)
    try:
        while remaining:
            batch = [await inbox.get()]
            while not inbox.empty():
                batch.append(inbox.get_nowait())
            remaining -= sum(isinstance(item, _Finished) for item in batch)
            yield batch
    finally:
        mailbox.open_streams -= 1
        for task in tasks:
            if not task.done():
                task.cancel()


class ChunkFormat(Protocol):
    """How one route shapes its chunks' ``choices`` entries."""

    object_name: str

    def opening(self, index: int) -> dict[str, Any] | None:
        """The choice's first entry before any token (chat: the role), or None."""

    def entry(self, index: int, text: str, tokens: list[TokenEvent],
              reason: str | None) -> dict[str, Any]:
        """New text, its tokens' logprobs when asked for, and on the choice's
        last entry its finish reason."""


@dataclass
class StreamPlan:
    """What a streamed request needs besides its jobs."""

    completion_id: str
    model: str
    n: int
    stops: tuple[str, ...]
    include_usage: bool
    tokenizer: Any
    created: int = field(default_factory=lambda: int(time.time()))


def _line(payload: dict[str, Any]) -> str:
    return f"data: {_encode(payload)}\n\n"


def _remaining(sequence: SequenceOutput, sent: int) -> list[TokenEvent]:
    tops = sequence.top_logprobs
    return [TokenEvent(0, token, logprob, tuple(tops[i]) if tops is not None else None)
            for i, (token, logprob) in enumerate(zip(sequence.token_ids, sequence.logprobs,
                                                     strict=True)) if i >= sent]


async def sse_events(engine: Engine, jobs: list[GenerationJob], plan: StreamPlan,
                     form: ChunkFormat, mailbox: Mailbox) -> AsyncIterator[str]:
    """The ``text/event-stream`` body: chunks, an optional usage chunk, ``[DONE]``."""

    # Every chunk shares its envelope; only "choices" (and the last "usage") vary.
    envelope = _encode({"id": plan.completion_id, "object": form.object_name,
                        "created": plan.created, "model": plan.model})[:-1]

    def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
        tail = f',"usage":{_encode(usage)}' if plan.include_usage else ""
        return f'data: {envelope},"choices":{_encode(choices)}{tail}}}\n\n'

    total = len(jobs) * plan.n
    texts = [TextStream(plan.tokenizer, plan.stops) for _ in range(total)]
    sent = [0] * total
    outputs: dict[int, GenerationOutput] = {}
    openings = [entry for index in range(total) if (entry := form.opening(index)) is not None]
    if openings:
        yield chunk(openings)
    try:
        async for batch in follow(engine, jobs, mailbox):
            new: dict[int, list[TokenEvent]] = {}
            ends: dict[int, SequenceOutput] = {}
            for item in batch:
                if isinstance(item, _Step):
                    if item.job in outputs:
                        continue  # the final output already delivered these
                    for event in item.events:
                        index = item.job * plan.n + event.index
                        new.setdefault(index, []).append(event)
                        sent[index] += 1
                    continue
                output = item.task.result()
                outputs[item.job] = output
                for position, sequence in enumerate(output.sequences):
                    index = item.job * plan.n + position
                    rest = _remaining(sequence, sent[index])
                    if rest:
                        new.setdefault(index, []).extend(rest)
                        sent[index] += len(rest)
                    ends[index] = sequence
            entries = []
            for index in sorted(new.keys() | ends.keys()):
                events = new.get(index, [])
                text = texts[index].extend([event.token_id for event in events])
                ended = ends.get(index)
                if ended is not None:
                    text += texts[index].finish(ended.text)
                entries.append(form.entry(index, text, events,
                                          ended.finish_reason if ended else None))
            piece = chunk(entries) if entries else ""
            if len(outputs) == len(jobs):
                # The last chunk, the usage and [DONE] leave in one write.
                yield piece + _usage_chunk(chunk, plan, jobs, outputs) + DONE_LINE
                return
            if piece:
                yield piece
    except Exception as exc:  # the engine failed mid-stream: say so in the stream
        logger.exception("streamed generation failed")
        yield _line({"error": {"message": f"generation failed: {exc}", "type": "server_error",
                               "param": None, "code": None}}) + DONE_LINE


def _usage_chunk(chunk: Callable[..., str], plan: StreamPlan, jobs: list[GenerationJob],
                 outputs: dict[int, GenerationOutput]) -> str:
    if not plan.include_usage:
        return ""
    prompt_tokens = sum(len(job.prompt) for job in jobs)
    completion = sum(len(s.token_ids) for o in outputs.values() for s in o.sequences)
    return chunk([], {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                      "total_tokens": prompt_tokens + completion})


class EventStreamResponse(StreamingResponse):
    """``text/event-stream`` whose ``[DONE]`` piece also ends the body.

    Starlette's ``StreamingResponse`` ends every body with one more, empty
    write (the chunked encoding's terminator); here the piece that ends with
    ``[DONE]`` carries it, so a stream's end costs the server one socket write
    and the client one read instead of two each (32 streams end together).
    """

    media_type = "text/event-stream"

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        async for piece in self.body_iterator:
            data = piece.encode() if isinstance(piece, str) else bytes(piece)
            last = data.endswith(DONE_BYTES)
            await send({"type": "http.response.body", "body": data, "more_body": not last})
            if last:
                return
        await send({"type": "http.response.body", "body": b"", "more_body": False})
