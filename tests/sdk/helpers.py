"""Data and probes shared by the client tests (tiny model: vocabulary 4096)."""

from __future__ import annotations

import math
import random

from loops_runner.sdk import AdamParams, Datum, ModelInput, TensorData, TrainingClient

LR = AdamParams(learning_rate=5e-3)


def sft_datum(tokens: list[int], prompt_len: int = 0) -> Datum:
    """Next-token datum over ``tokens``; the first ``prompt_len`` targets are masked."""
    targets = tokens[1:]
    weights = [0.0 if i < prompt_len else 1.0 for i in range(len(targets))]
    return Datum(model_input=ModelInput.from_ints(tokens[:-1]),
                 loss_fn_inputs={"target_tokens": TensorData(data=targets, dtype="int64"),
                                 "weights": TensorData(data=weights, dtype="float32")})


def batch(seed: int, rows: int = 2, length: int | None = None) -> list[Datum]:
    rng = random.Random(seed)
    return [sft_datum([rng.randrange(10, 4000) for _ in range(length or rng.randrange(6, 14))],
                      prompt_len=2) for _ in range(rows)]


PROBE = [sft_datum([*d.model_input.to_ints(), 7]) for d in batch(10_000, rows=3, length=12)]


def probe(client: TrainingClient) -> list[list[float]]:
    """The adapter's logprobs on fixed data: equal adapters give equal probes."""
    result = client.forward(PROBE).result()
    return [output["logprobs"].tolist() for output in result.loss_fn_outputs]


def assert_same_probe(a: list[list[float]], b: list[list[float]], tol: float = 1e-6) -> None:
    assert len(a) == len(b)
    for row_a, row_b in zip(a, b, strict=True):
        assert len(row_a) == len(row_b)
        for x, y in zip(row_a, row_b, strict=True):
            if math.isnan(x) or math.isnan(y):
                assert math.isnan(x) and math.isnan(y), (x, y)
                continue
            assert abs(x - y) <= tol * max(1.0, abs(x)), (x, y)
