"""``forward_backward_custom``: a user loss applied through a linear surrogate (spec 4.8).

The trainer only knows built-in losses, but its cross-entropy with arbitrary
weights is linear in the log-probabilities: ``L = -Σ w·logprob``. So a custom
loss ``C(logprobs)`` is trained in two ordinary operations:

1. ``forward`` (no gradient) returns the per-token log-probabilities;
2. the client evaluates ``C`` on them with PyTorch and back-propagates to get
   ``g = dC/dlogprobs``;
3. ``forward_backward`` with ``weights = -g`` makes the trainer accumulate
   exactly ``dC/dθ`` (chain rule through the logprobs it recomputes).

Both calls use ``skip_token_normalization`` so the gradient is not divided by
a token count the user's loss knows nothing about. torch is imported here
lazily: the rest of the client never needs it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from loops_runner.wire import Datum, ForwardBackwardOutput, TensorData

SURROGATE_LOSS = "cross_entropy"
SURROGATE_CONFIG: dict[str, Any] = {"skip_token_normalization": True}
# (data, per-datum logprob tensors) -> (scalar loss tensor, metrics)
CustomLossFn = Callable[[list[Datum], list[Any]], tuple[Any, dict[str, float]]]


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is installed in dev
        raise ImportError("forward_backward_custom needs PyTorch: pip install torch") from exc
    return torch


def forward_data(data: Sequence[Datum]) -> list[Datum]:
    """The data of the logprob pass: ``target_tokens`` plus weights (zeros if none).

    Only those two keys travel; the user's loss still sees every key of the
    original data.
    """
    prepared = []
    for index, datum in enumerate(data):
        targets = datum.loss_fn_inputs.get("target_tokens")
        if targets is None:
            raise ValueError(f"data[{index}].loss_fn_inputs needs 'target_tokens' for "
                             "forward_backward_custom")
        weights = datum.loss_fn_inputs.get("weights")
        if weights is None:
            weights = TensorData(data=[0.0] * targets.numel, dtype="float32",
                                 shape=list(targets.shape or [targets.numel]))
        prepared.append(datum.model_copy(
            update={"loss_fn_inputs": {"target_tokens": targets, "weights": weights}}))
    return prepared


def logprob_tensors(result: ForwardBackwardOutput, count: int) -> list[Any]:
    """Leaf tensors (requires_grad) of the forward pass's logprobs; masked NaN -> 0."""
    torch = _import_torch()
    if result.metrics.get("skip_token_normalization") != 1.0:
        raise RuntimeError("the trainer did not honour skip_token_normalization on forward, "
                           "which custom losses need (spec 4.8)")
    if len(result.loss_fn_outputs) != count:
        raise ValueError(f"forward returned {len(result.loss_fn_outputs)} outputs for "
                         f"{count} data")
    tensors = []
    for index, output in enumerate(result.loss_fn_outputs):
        logprobs = output.get("logprobs")
        if logprobs is None:
            raise ValueError(f"forward output {index} has no 'logprobs'")
        values = torch.nan_to_num(logprobs.to_torch().to(torch.float32), nan=0.0)
        tensors.append(values.detach().clone().requires_grad_(True))
    return tensors


def surrogate_data(data: Sequence[Datum], loss_fn: CustomLossFn,
                   logprobs: list[Any]) -> tuple[list[Datum], dict[str, float]]:
    """Run the user's loss, back-propagate, and build the weighted surrogate data."""
    torch = _import_torch()
    loss, metrics = loss_fn(list(data), logprobs)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise TypeError("a custom loss must return (scalar tensor, metrics dict)")
    loss.backward()
    surrogate = []
    for datum, tensor in zip(data, logprobs, strict=True):
        # A datum the loss does not depend on gets no gradient: weight 0.
        grad = tensor.grad if tensor.grad is not None else torch.zeros_like(tensor)
        surrogate.append(datum.model_copy(update={"loss_fn_inputs": {
            "target_tokens": datum.loss_fn_inputs["target_tokens"],
            "weights": TensorData.from_torch((-grad).to(torch.float32)),
        }}))
    clean_metrics = {str(key): float(value) for key, value in dict(metrics or {}).items()}
    return surrogate, clean_metrics
