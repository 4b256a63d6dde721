"""Streaming on the OpenAI routes: 32 concurrent ``stream=true`` completions vs the
same 32 requests without streaming, on one real ``loops-runner serve sampler`` (tiny).

* **ours**: 32 ``POST /v1/completions`` with ``stream=true`` sent at once
  (``NEW_TOKENS`` new tokens each, greedy, ``ignore_eos``), every event read as
  it arrives (``httpx`` streaming, SSE lines parsed); throughput = generated
  tokens / wall time from the first send to the last ``[DONE]``.
* **anchor**: the same 32 requests with ``stream=false``, batched by the same
  server. Goal: streaming keeps >= 0.9x its throughput (streaming costs only
  the per-step hand-off and the event writes, never the batching).
* **minimal reader** (reported): the same streamed requests read by a bare
  asyncio socket to the end of the response, no HTTP library and no parsing:
  the server's own cost of streaming, without the reader's. The benchmark's
  reader shares this machine's cores with the server, and httpx (with h11
  underneath) spends about 0.3 ms of CPU per event, so on a small busy machine
  the row above also measures the reader.
* **time to first token** (reported): per streamed request, send to the first
  event that carries text; the row shows the median over the 32 requests
  (median over rounds), beside the median time a non-streamed request takes
  to answer in full.

The server delivers a stream's tokens after its first in deliveries
``stream_interval_s`` apart (0.1 s by default), stretched to ``open streams /
stream_events_per_s`` (100 by default: 0.32 s for these 32 streams;
``openai_stream.Mailbox``); the row's note says which settings it used.

Each round runs both once, order rotating; value = median of per-round ratios.
The concatenated streamed text is checked against the non-streamed text
(greedy, so it must match exactly). Quick: at most 2 rounds.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any

from benchmarks.measures._support import interleave, paired, shared_sampler, standalone
from benchmarks.suite import BenchContext, Result, median

REQUESTS = 32
PROMPT_TOKENS = 32
NEW_TOKENS = 64


def run(ctx: BenchContext) -> list[Result]:
    import httpx

    rounds = min(ctx.rounds, 2) if ctx.quick else ctx.rounds
    url = shared_sampler(ctx).url
    address = httpx.URL(url)
    health = httpx.get(f"{url}/health", timeout=30).json()
    interval, budget = health["stream_interval_s"], health["stream_events_per_s"]
    prompts = [[10 + (17 * i + 31 * j) % 3000 for j in range(PROMPT_TOKENS)]
               for i in range(REQUESTS)]

    def body(i: int, stream: bool) -> dict[str, Any]:
        return {"model": "tiny", "prompt": prompts[i], "max_tokens": NEW_TOKENS,
                "temperature": 0, "ignore_eos": True, "stream": stream}

    async def streamed(client: httpx.AsyncClient, i: int, start: float,
                       ) -> tuple[str, float, int]:
        text, first, events = "", 0.0, 0
        async with client.stream("POST", f"{url}/v1/completions",
                                 json=body(i, True)) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                for choice in json.loads(line[6:])["choices"]:
                    if choice["text"] and not first:
                        first = time.perf_counter() - start
                    text += choice["text"]
                    events += 1
        return text, first, events

    async def whole(client: httpx.AsyncClient, i: int, start: float) -> tuple[str, float, int]:
        response = await client.post(f"{url}/v1/completions", json=body(i, False))
        response.raise_for_status()
        answer = response.json()
        assert answer["usage"]["completion_tokens"] == NEW_TOKENS
        return answer["choices"][0]["text"], time.perf_counter() - start, 0

    texts: dict[str, list[str]] = {}
    latency: dict[str, list[float]] = {"stream": [], "whole": []}

    async def concurrent(kind: str) -> float:
        call = streamed if kind == "stream" else whole
        limits = httpx.Limits(max_connections=REQUESTS * 2)
        async with httpx.AsyncClient(timeout=600, limits=limits) as client:
            start = time.perf_counter()
            results = await asyncio.gather(*[call(client, i, start) for i in range(REQUESTS)])
            elapsed = time.perf_counter() - start
        texts[kind] = [text for text, _, _ in results]
        latency[kind].append(statistics.median(seconds for _, seconds, _ in results))
        if kind == "stream":
            # Events carry a few tokens each when the reader lags; never one big blob.
            assert all(events > 1 for _, _, events in results)
        return REQUESTS * NEW_TOKENS / elapsed

    async def bare(i: int) -> bytes:
        """One streamed request over a plain socket, read to its end; the last bytes."""
        payload = json.dumps(body(i, True)).encode()
        reader, writer = await asyncio.open_connection(address.host, address.port)
        writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: bench\r\n"
                     b"Content-Type: application/json\r\nConnection: close\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
        await writer.drain()
        tail = b""
        while chunk := await reader.read(65536):
            tail = (tail + chunk)[-64:]
        writer.close()
        return tail

    async def all_bare() -> float:
        start = time.perf_counter()
        tails = await asyncio.gather(*[bare(i) for i in range(REQUESTS)])
        elapsed = time.perf_counter() - start
        assert all(b"data: [DONE]" in tail for tail in tails), "a stream did not finish"
        return REQUESTS * NEW_TOKENS / elapsed

    def stream() -> float:
        return asyncio.run(concurrent("stream"))

    def stream_bare() -> float:
        return asyncio.run(all_bare())

    def non_stream() -> float:
        return asyncio.run(concurrent("whole"))

    # First-call costs (connections, allocator, kernels) stay out of the rounds.
    stream()
    non_stream()
    assert texts["stream"] == texts["whole"], "streamed text differs from the non-streamed"
    for figures in latency.values():
        figures.clear()
    values = interleave(rounds, {"stream": stream, "whole": non_stream, "bare": stream_bare})
    shape = (f"{REQUESTS} concurrent /v1/completions x {NEW_TOKENS} new tokens, prompts of "
             f"{PROMPT_TOKENS}, greedy, stream interval {interval:g} s, "
             f"{budget:g} events/s for all streams (0 = no budget)")
    return [
        paired("streaming vs non-streaming", values["stream"], values["whole"],
               unit="tok/s", goal=0.9, direction="at_least",
               note=f"ours = stream=true (SSE read as it arrives), anchor = stream=false, "
                    f"same server; {shape}; value = median per-round ratio"),
        paired("streaming, minimal reader", values["bare"], values["whole"], unit="tok/s",
               goal=None, direction="report",
               note=f"ours = stream=true read by a bare socket to the end (no HTTP library, "
                    f"no parsing: the server's cost alone), anchor = stream=false; {shape}; "
                    f"value = median per-round ratio"),
        Result(measure="streaming time to first token", ours=median(latency["stream"]),
               anchor=median(latency["whole"]), unit="s",
               value=median(latency["stream"]) / median(latency["whole"]), goal=None,
               direction="report", rounds=[round(v, 4) for v in latency["stream"]],
               note=f"ours = median time to a streamed request's first text; anchor = median "
                    f"time to a whole non-streamed answer; value = ours/anchor; {shape}"),
    ]


if __name__ == "__main__":
    standalone(run)
