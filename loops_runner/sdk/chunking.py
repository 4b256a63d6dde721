"""Splitting large ``forward``/``forward_backward`` requests (spec 4.6).

A request body is capped at 24 MiB. Each datum is serialised once to compact
JSON (the bytes that go on the wire); if the whole body would exceed the cap,
the data is packed greedily into contiguous chunks that each fit, one
operation per chunk. Rows that belong together (DPO's chosen/rejected pairs)
are packed as a unit so a pair never straddles two requests. The chunk
results are merged back into one ``ForwardBackwardOutput``. The chunks of one
call are uploaded in parallel, at most ``CHUNK_UPLOADS`` at a time, by
``upload`` or its twin ``upload_async`` (the same cap and the same outcome).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from loops_runner.wire import Datum, ForwardBackwardOutput

MAX_REQUEST_BYTES = 24 * 1024 * 1024  # 25,165,824
# Losses whose consecutive rows are one unit: loss name -> rows per unit.
ROW_GROUP_SIZES: dict[str, int] = {"dpo": 2}
SKIP_NORMALIZATION_METRIC = "skip_token_normalization"
# Chunks of one oversized request are uploaded in parallel (spec 4.6), at most
# this many bodies of up to 24 MiB in flight at once.
CHUNK_UPLOADS = 4

Ref = TypeVar("Ref")


def dumps(value: Any) -> bytes:
    """Compact JSON, as sent on the wire (no NaN: tensors already carry null)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def encode_data(data: Sequence[Datum]) -> list[bytes]:
    return [dumps(datum.model_dump(mode="json")) for datum in data]


@dataclass(frozen=True)
class BodyTemplate:
    """A request body with its ``data`` list left open, so chunks are joined, not re-encoded."""

    prefix: bytes  # everything up to and including '"data":['
    suffix: bytes  # '],' ... '}'

    @classmethod
    def build(cls, fields: dict[str, Any]) -> BodyTemplate:
        marker = "\x00__data__\x00"
        text = dumps({"data": marker, **fields}).decode("utf-8")
        head, tail = text.split(json.dumps(marker), 1)
        return cls((head + "[").encode("utf-8"), ("]" + tail).encode("utf-8"))

    @property
    def overhead(self) -> int:
        return len(self.prefix) + len(self.suffix)

    def render(self, encoded: Sequence[bytes]) -> bytes:
        return self.prefix + b",".join(encoded) + self.suffix


def plan_chunks(sizes: Sequence[int], *, overhead: int, cap: int = MAX_REQUEST_BYTES,
                group_size: int = 1) -> list[range]:
    """Contiguous index ranges whose bodies (``overhead`` + data + commas) fit ``cap``.

    ``group_size`` rows are packed as one unit. Raises ``ValueError`` when one
    unit alone cannot fit, or when the row count is not a multiple of the unit.
    """
    if not sizes:
        return [range(0, 0)]
    if len(sizes) % group_size:
        raise ValueError(f"this loss takes rows in groups of {group_size} "
                         f"(e.g. chosen/rejected pairs); got {len(sizes)} rows")
    chunks: list[range] = []
    start = 0
    used = overhead
    for first in range(0, len(sizes), group_size):
        unit = range(first, first + group_size)
        unit_bytes = sum(sizes[i] for i in unit) + (group_size - 1)
        if overhead + unit_bytes > cap:
            which = f"datum[{first}]" if group_size == 1 else \
                f"rows {first}..{first + group_size - 1} (one group)"
            raise ValueError(
                f"{which} serializes to {unit_bytes} bytes, which alone exceeds the "
                f"{cap}-byte request cap; shorten the sequence or its loss_fn_inputs")
        separator = 1 if first > start else 0
        if first > start and used + separator + unit_bytes > cap:
            chunks.append(range(start, first))
            start, used = first, overhead + unit_bytes
        else:
            used += separator + unit_bytes
    chunks.append(range(start, len(sizes)))
    return chunks


def merge_outputs(results: Sequence[ForwardBackwardOutput],
                  counts: Sequence[int]) -> ForwardBackwardOutput:
    """One result from the chunks': outputs in order, loss and metrics weighted by rows.

    ``skip_token_normalization`` stays 1.0 only if every chunk reported 1.0.
    """
    if len(results) == 1:
        return results[0]
    total = sum(counts)
    weights = [count / total if total else 1.0 / len(results) for count in counts]
    metrics: dict[str, float] = {}
    for key in sorted({key for result in results for key in result.metrics}):
        if key == SKIP_NORMALIZATION_METRIC:
            metrics[key] = float(all(result.metrics.get(key) == 1.0 for result in results))
            continue
        present = [(result.metrics[key], weight)
                   for result, weight in zip(results, weights, strict=True)
                   if key in result.metrics]
        mass = sum(weight for _, weight in present)
        if mass:
            metrics[key] = sum(value * weight for value, weight in present) / mass
    outputs = [output for result in results for output in result.loss_fn_outputs]
    return ForwardBackwardOutput(
        loss=sum(result.loss * weight for result, weight in zip(results, weights, strict=True)),
        loss_fn_output_type=next((r.loss_fn_output_type for r in results
                                  if r.loss_fn_output_type), "ArrayRecord"),
        loss_fn_outputs=outputs,
        metrics=metrics,
    )


def upload(submit: Callable[[bytes], Ref],
           bodies: Sequence[bytes]) -> tuple[list[Ref], list[BaseException]]:
    """Submit every body, ``CHUNK_UPLOADS`` at a time; the accepted refs (in order) and errors."""
    if len(bodies) == 1:
        try:
            return [submit(bodies[0])], []
        except Exception as exc:
            return [], [exc]
    with ThreadPoolExecutor(min(CHUNK_UPLOADS, len(bodies))) as pool:
        pending = [pool.submit(submit, body) for body in bodies]
    errors = [error for f in pending if (error := f.exception()) is not None]
    return [f.result() for f in pending if f.exception() is None], errors


async def upload_async(submit: Callable[[bytes], Awaitable[Ref]],
                       bodies: Sequence[bytes]) -> tuple[list[Ref], list[BaseException]]:
    """``upload`` on the event loop: the same cap, the same outcome."""
    slots = asyncio.Semaphore(CHUNK_UPLOADS)

    async def one(body: bytes) -> Ref:
        async with slots:
            return await submit(body)

    outcomes = await asyncio.gather(*(one(body) for body in bodies), return_exceptions=True)
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    return [o for o in outcomes if not isinstance(o, BaseException)], errors
