"""Malformed requests are refused at submit (422/413) and change nothing.

Each case below is sent to a run that holds weights, optimizer moments and a
non-empty gradient buffer; afterwards the weights, the buffer, the step and a
forward's loss must be exactly what they were.
"""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

import httpx
import pytest
import torch

from tests.trainer.trainer_helpers import Trainer, datum, tensor

TOKENS = [21, 22, 23, 24, 25, 26, 27, 28]
GOOD = datum(TOKENS)


def _with(path: list[Any], value: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """A copy of the good datum with one field replaced (``value`` None deletes it)."""
    item = copy.deepcopy(base or GOOD)
    node = item
    for key in path[:-1]:
        node = node[key]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return item


def _fb(data: list[dict[str, Any]], loss_fn: str = "cross_entropy",
        config: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"data": data, "loss_fn": loss_fn, "loss_fn_config": config, **extra}


def _policy(n: int = len(TOKENS), **overrides: Any) -> dict[str, Any]:
    inputs: dict[str, Any] = {"logprobs": [-1.0] * n, "advantages": [0.5] * n}
    inputs.update(overrides)
    return datum(TOKENS, **inputs)


N = len(TOKENS)
# (name, operation, JSON body or raw bytes, words the 422 message must contain)
CASES: list[tuple[str, str, Any, list[str]]] = [
    ("token id above vocab", "forward_backward",
     _fb([_with(["model_input", "chunks", 0, "tokens"], [*TOKENS[:-1], 5000])]),
     ["data[0].model_input", "5000", "vocabulary [0, 4096)"]),
    ("negative input token", "forward_backward",
     _fb([GOOD, _with(["model_input", "chunks", 0, "tokens"], [-3, *TOKENS[1:]])]),
     ["data[1].model_input", "-3"]),
    ("target length mismatch", "forward_backward",
     _fb([_with(["loss_fn_inputs", "target_tokens"], tensor([1, 2, 3], "int64"))]),
     ["data[0].loss_fn_inputs.target_tokens", "length 3", f"length {N}"]),
    ("weights shape mismatch", "forward_backward",
     _fb([_with(["loss_fn_inputs", "weights"], tensor([1.0] * (N + 1), "float32"))]),
     ["data[0].loss_fn_inputs.weights", "shape"]),
    ("bool target dtype", "forward_backward",
     _fb([_with(["loss_fn_inputs", "target_tokens"], tensor([True] * N, "bool"))]),
     ["target_tokens", "bool"]),
    ("fractional float targets", "forward_backward",
     _fb([_with(["loss_fn_inputs", "target_tokens"], tensor([1.5] * N, "float32"))]),
     ["target_tokens", "integers", "1.5"]),
    ("unsupported dtype", "forward_backward",
     _fb([_with(["loss_fn_inputs", "weights"], {"data": [1] * N, "dtype": "complex64",
                                                 "shape": [N]})]),
     ["weights", "complex64"]),
    ("data/shape disagreement", "forward_backward",
     _fb([_with(["loss_fn_inputs", "weights"], {"data": [1.0] * N, "dtype": "float32",
                                                 "shape": [N + 2]})]),
     ["weights", f"{N + 2}"]),
    ("missing target_tokens", "forward_backward",
     _fb([_with(["loss_fn_inputs", "target_tokens"], None)]),
     ["data[0].loss_fn_inputs", "target_tokens"]),
    ("ppo without advantages", "forward_backward",
     _fb([datum(TOKENS, logprobs=[-1.0] * N)], "ppo"), ["advantages", "'ppo'"]),
    ("unknown loss", "forward_backward", _fb([GOOD], "hinge"), ["loss_fn", "cross_entropy"]),
    ("unknown config key", "forward_backward",
     _fb([GOOD], "ppo", {"clip_epsilon": 0.2}), ["clip_epsilon", "clip_low_threshold"]),
    ("config value not a number", "forward_backward",
     _fb([GOOD], "dpo", {"beta": "high"}), ["loss_fn_config.beta", "number"]),
    ("negative clip bound", "forward_backward",
     _fb([_policy()], "ppo", {"clip_low_threshold": -0.2}), ["clip_low_threshold", "> 0"]),
    ("odd dpo rows", "forward_backward",
     _fb([datum(TOKENS, weights=[1.0] * N, ref_logprobs=[-1.0] * N)] * 3, "dpo"),
     ["even", "3"]),
    ("dpo without ref_logprobs", "forward_backward",
     _fb([datum(TOKENS, weights=[1.0] * N)] * 2, "dpo"), ["ref_logprobs"]),
    ("sequence over model maximum", "forward_backward",
     _fb([datum([5] * 2049)]), ["2049 tokens", "2048"]),
    ("empty model input", "forward_backward",
     _fb([datum([], [])]), ["data[0].model_input", "no tokens"]),
    ("null weight at a target", "forward_backward",
     _fb([_with(["loss_fn_inputs", "weights"], tensor([1.0, None, *[1.0] * (N - 2)],
                                                      "float32"))]),
     ["weights", "not finite", "1"]),
    ("null sampler logprob at an active token", "forward_backward",
     _fb([_policy(logprobs=[-1.0, -1.0, None, *[-1.0] * (N - 3)])], "importance_sampling"),
     ["data[0].loss_fn_inputs.logprobs", "position 2"]),
    ("advantages of the wrong length", "forward_backward",
     _fb([_policy(advantages=[1.0] * (N + 1))], "ppo"), ["advantages", f"[{N + 1}]"]),
    ("(N, K) targets for a policy loss", "forward_backward",
     _fb([datum(TOKENS, [[1, 2]] * N, logprobs=[-1.0] * N, advantages=[1.0] * N)], "cispo"),
     ["(N, K)", "cross_entropy"]),
    ("targets of different ranks", "forward_backward",
     _fb([GOOD, datum(TOKENS, [[1, 2]] * N)]), ["data[1]", "same target shape"]),
    ("target id above vocab", "forward_backward",
     _fb([_with(["loss_fn_inputs", "target_tokens"], tensor([9999] * N, "int64"))]),
     ["target_tokens", "9999", "4096"]),
    ("image chunk on a text model", "forward",
     _fb([_with(["model_input", "chunks"], [
         {"type": "encoded_text", "tokens": TOKENS[:4]},
         {"type": "image", "data": "iVBORw0KGgo=", "format": "png", "expected_tokens": 4}])]),
     ["chunks[1]", "text-only"]),
    ("top_k_logprobs over 20", "forward", _fb([GOOD], top_k_logprobs=21), ["top_k_logprobs"]),
    ("infinite advantage", "forward_backward",
     json.dumps(_fb([_policy(advantages=[float("inf")] * N)], "dro")).encode(),
     ["advantages", "not finite"]),
    ("not JSON", "forward_backward", b'{"data": [', ["not valid JSON"]),
    ("negative learning rate", "optim_step",
     {"adam_params": {"learning_rate": -1.0}}, ["adam_params.learning_rate"]),
    ("checkpoint name escaping its folder", "save_state", {"name": "../evil"}, ["name"]),
    ("unreadable path scheme", "load_state_with_optimizer",
     {"path": "s3://bucket/ckpt"}, ["s3://bucket/ckpt"]),
    ("bt path of a non-checkpoint", "load_state",
     {"path": "bt://loops:abc/sequences/x"}, ["sequences"]),
    ("base model not served", "init_trainer_server",
     {"lora_rank": 4, "base_model": "Qwen/Qwen3-8B"}, ["Qwen/Qwen3-8B", "not served"]),
    ("lora rank zero", "init_trainer_server", {"lora_rank": 0, "base_model": "tiny"},
     ["lora_rank"]),
]


@pytest.fixture
def primed(trainer_server, run_id: str) -> Trainer:
    """A run with trained weights, Adam moments and a non-empty gradient buffer."""
    trainer = Trainer(trainer_server.url, run_id)
    trainer.init(rank=4, seed=3)
    trainer.forward_backward([GOOD])
    trainer.optim_step(1e-2)
    trainer.forward_backward([GOOD, datum(TOKENS[:5])])
    return trainer


def _snapshot(trainer: Trainer) -> tuple[float, dict, dict, dict, int]:
    loss = trainer.forward([GOOD])["loss"]
    grads, meta = trainer.tensors("gradients")
    adapter, _ = trainer.tensors("adapter")
    return loss, grads, meta, adapter, trainer.policy_version()


def test_malformed_requests_are_refused_and_change_nothing(primed: Trainer) -> None:
    assert len(CASES) >= 20
    before = _snapshot(primed)
    failures = []
    for name, op, body, words in CASES:
        if isinstance(body, bytes):
            response = primed.client.post(f"{primed.url}/{op}", content=body,
                                          headers=primed.headers(uuid.uuid4().hex))
        else:
            response = primed.submit(op, body)
        detail = response.json().get("detail", "") if response.content else ""
        if response.status_code != 422 or not all(w in detail for w in words):
            failures.append(f"{name}: {response.status_code} {detail!r}")
    assert not failures, "\n".join(failures)

    after = _snapshot(primed)
    assert after[0] == before[0]  # the identical forward loss
    assert all(torch.equal(after[1][k], before[1][k]) for k in before[1])  # gradient buffer
    assert after[2] == before[2]  # counter, mode, step
    assert all(torch.equal(after[3][k], before[3][k]) for k in before[3])  # weights
    assert after[4] == before[4]


def test_body_over_32_mib_is_413(primed: Trainer) -> None:
    before = primed.tensors("gradients")[1]
    big = b'{"data": [], "padding": "' + b"x" * (33 * 1024 * 1024) + b'"}'
    response = primed.client.post(f"{primed.url}/forward_backward", content=big,
                                  headers=primed.headers(uuid.uuid4().hex))
    assert response.status_code == 413
    assert "32 MiB" in response.json()["detail"]
    chunked = httpx.post(f"{primed.url}/forward_backward", headers=primed.headers(),
                         content=iter([big[: len(big) // 2], big[len(big) // 2:]]))
    assert chunked.status_code == 413  # no Content-Length: counted while streaming
    assert primed.tensors("gradients")[1] == before
