"""A small raw-HTTP client for the trainer tests (no SDK: the tests see the wire)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

OP_TIMEOUT_S = 120.0


def datum(tokens: list[int], targets: list[int] | list[list[int]] | None = None,
          **inputs: Any) -> dict[str, Any]:
    """A wire Datum. ``targets`` defaults to the next-token shift of ``tokens``.

    Keyword inputs become ``loss_fn_inputs``: lists become float32 tensors
    (``None`` allowed: null = NaN); a ready TensorData dict passes through.
    """
    if targets is None:
        targets = [*tokens[1:], -100]
    loss_inputs: dict[str, Any] = {"target_tokens": tensor(targets, "int64")}
    for key, value in inputs.items():
        loss_inputs[key] = value if isinstance(value, dict) else tensor(value, "float32")
    return {"model_input": {"chunks": [{"type": "encoded_text", "tokens": list(tokens)}]},
            "loss_fn_inputs": loss_inputs}


def tensor(values: list[Any], dtype: str) -> dict[str, Any]:
    shape = [len(values)]
    flat = values
    if values and isinstance(values[0], list):
        shape = [len(values), len(values[0])]
        flat = [v for row in values for v in row]
    return {"data": flat, "dtype": dtype, "shape": shape}


@dataclass
class Trainer:
    url: str
    run_id: str
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=OP_TIMEOUT_S))

    def headers(self, key: str | None = None) -> dict[str, str]:
        headers = {"X-Run-Id": self.run_id}
        if key is not None:
            headers["Idempotency-Key"] = key
        return headers

    def submit(self, op: str, body: dict[str, Any], key: str | None = None) -> httpx.Response:
        body = {"run_id": self.run_id, "model": "tiny", **body}
        return self.client.post(f"{self.url}/{op}", json=body,
                                headers=self.headers(key or uuid.uuid4().hex))

    def poll(self, operation_id: str) -> dict[str, Any]:
        while True:
            response = self.client.get(f"{self.url}/operations/{operation_id}")
            if response.status_code == 408:
                continue
            assert response.status_code == 200, response.text
            return response.json()  # type: ignore[no-any-return]

    def op(self, op: str, body: dict[str, Any], key: str | None = None) -> dict[str, Any]:
        """Submit, wait, return ``result``; fail the test on any error."""
        response = self.submit(op, body, key)
        assert response.status_code == 202, f"{op}: {response.status_code} {response.text}"
        outcome = self.poll(response.json()["operation_id"])
        assert outcome["status"] == "done", f"{op}: {outcome}"
        return outcome["result"]  # type: ignore[no-any-return]

    def op_outcome(self, op: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.submit(op, body)
        assert response.status_code == 202, f"{op}: {response.status_code} {response.text}"
        return self.poll(response.json()["operation_id"])

    def init(self, rank: int = 4, seed: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"lora_rank": rank, "base_model": "tiny", "seq_id": 1}
        if seed is not None:
            body["seed"] = seed
        return self.op("init_trainer_server", body)

    def forward_backward(self, data: list[dict[str, Any]], loss_fn: str = "cross_entropy",
                         config: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
        return self.op("forward_backward", {"data": data, "loss_fn": loss_fn,
                                            "loss_fn_config": config, **extra})

    def forward(self, data: list[dict[str, Any]], loss_fn: str = "cross_entropy",
                config: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
        return self.op("forward", {"data": data, "loss_fn": loss_fn, "loss_fn_config": config,
                                   **extra})

    def optim_step(self, learning_rate: float = 1e-3, **params: Any) -> dict[str, Any]:
        return self.op("optim_step", {"adam_params": {"learning_rate": learning_rate, **params}})

    def tensors(self, what: str) -> tuple[dict[str, Any], dict[str, str]]:
        """``what`` = ``adapter`` or ``gradients``: the run's tensors via the debug route."""
        from safetensors.torch import load

        response = self.client.get(f"{self.url}/debug/runs/{self.run_id}/{what}")
        assert response.status_code == 200, response.text
        content = response.content
        # safetensors: 8-byte little-endian header size, then the JSON header.
        header_size = int.from_bytes(content[:8], "little")
        meta = json.loads(content[8: 8 + header_size]).get("__metadata__", {})
        return load(content), meta

    def policy_version(self) -> int:
        response = self.client.get(f"{self.url}/policy_version", headers=self.headers())
        assert response.status_code == 200, response.text
        return int(response.json()["policy_version"])
