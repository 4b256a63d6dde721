"""Submit-time checks of forward/forward_backward requests, and their tensors.

Everything that can be known wrong before running is refused here, with a
message naming the datum, the field and the limit (422, spec 4.1), so a
refused request never touches the weights, the gradient buffer, the optimizer
or the step. What passes is converted once into compact tensors
(:class:`PreparedBatch`), already sanitised: positions that do not take part
in the loss hold finite zeros, so a masked ``null`` can never turn into a NaN
gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from loops_runner.servers.common import InvalidRequest
from loops_runner.servers.trainer.losses import (
    LOSS_CONFIG_DEFAULTS,
    LOSS_REQUIRED_INPUTS,
    POLICY_LOSSES,
    policy_active,
)
from loops_runner.wire.model_input import ImageChunk
from loops_runner.wire.tensors import BOOL_DTYPES, FLOAT_DTYPES, TensorData
from loops_runner.wire.training import ForwardBackwardRequest

PER_POSITION_INPUTS = ("logprobs", "advantages", "ref_logprobs", "mask")


@dataclass(frozen=True)
class ModelLimits:
    vocab_size: int
    max_length: int
    model_name: str
    supports_images: bool = False


@dataclass
class PreparedDatum:
    tokens: torch.Tensor  # (N,) int64
    target: torch.Tensor  # (N, K) int64; negative = no target
    target_rank: int  # 1 for (N,) targets, 2 for (N, K): the output shape follows it
    weights: torch.Tensor  # (N, K) float32, 0 where there is no target
    mask: torch.Tensor  # (N,) float32
    logprobs: torch.Tensor | None = None  # (N,)
    advantages: torch.Tensor | None = None  # (N,), (1,) broadcast
    ref_logprobs: torch.Tensor | None = None  # (N,)
    valid_any: torch.Tensor = field(init=False)  # (N,) bool: position has a target

    def __post_init__(self) -> None:
        self.valid_any = (self.target >= 0).any(dim=1)

    @property
    def length(self) -> int:
        return int(self.tokens.numel())


@dataclass
class PreparedBatch:
    loss_fn: str
    config: dict[str, Any]
    top_k: int
    data: list[PreparedDatum]

    @property
    def skip_token_normalization(self) -> bool:
        return bool(self.config.get("skip_token_normalization", False))

    @property
    def num_tokens(self) -> int:
        return sum(d.length for d in self.data)


# -- loss_fn_config ------------------------------------------------------------


def check_loss_config(loss_fn: str, config: dict[str, Any] | None) -> dict[str, Any]:
    defaults = LOSS_CONFIG_DEFAULTS[loss_fn]
    merged = dict(defaults)
    if not config:
        return merged
    unknown = sorted(set(config) - set(defaults))
    if unknown:
        allowed = ", ".join(sorted(defaults)) or "none"
        raise InvalidRequest(f"loss_fn_config: unknown key(s) {', '.join(map(repr, unknown))} "
                             f"for loss_fn {loss_fn!r} (allowed keys: {allowed})")
    for key, value in config.items():
        if isinstance(defaults[key], bool):
            if not isinstance(value, bool):
                raise InvalidRequest(f"loss_fn_config.{key} must be true or false, got {value!r}")
        elif (isinstance(value, bool) or not isinstance(value, int | float)
              or not math.isfinite(value)):
            raise InvalidRequest(f"loss_fn_config.{key} must be a finite number, got {value!r}")
        merged[key] = value
    _check_config_ranges(loss_fn, merged)
    return merged


def _check_config_ranges(loss_fn: str, cfg: dict[str, Any]) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise InvalidRequest(f"loss_fn_config.{message}")

    if loss_fn in ("ppo", "cispo"):
        lo, hi = cfg["clip_low_threshold"], cfg["clip_high_threshold"]
        need(lo > 0, f"clip_low_threshold must be > 0 (a ratio bound such as 0.8), got {lo}")
        need(hi >= lo, f"clip_high_threshold ({hi}) must be >= clip_low_threshold ({lo})")
    elif loss_fn == "dro":
        need(cfg["beta"] >= 0, f"beta must be >= 0, got {cfg['beta']}")
    elif loss_fn == "dpo":
        need(cfg["beta"] > 0, f"beta must be > 0, got {cfg['beta']}")
        need(0 <= cfg["label_smoothing"] < 0.5,
             f"label_smoothing must be in [0, 0.5), got {cfg['label_smoothing']}")
    elif loss_fn == "dppo":
        for key in ("dppo_mask_high", "dppo_mask_low", "adv_tau", "kl_tau"):
            need(cfg[key] >= 0, f"{key} must be >= 0, got {cfg[key]}")


# -- tensors -------------------------------------------------------------------


def _int_tensor(td: TensorData, where: str) -> torch.Tensor:
    if td.dtype in BOOL_DTYPES:
        raise InvalidRequest(f"{where}: dtype bool is not allowed for token ids (use int64)")
    if td.dtype in FLOAT_DTYPES:
        # The SDK's TensorData.from_list defaults to float32, so integral floats
        # are accepted as token ids; anything fractional is refused.
        values = torch.tensor(td.data, dtype=torch.float64)
        bad = ~torch.isfinite(values) | (values != values.round())
        if bool(bad.any()):
            index = int(bad.nonzero()[0, 0])
            raise InvalidRequest(f"{where}: token ids must be integers; value {td.data[index]!r} "
                                 f"at flat index {index} is not (dtype {td.dtype}; use int64)")
        return values.to(torch.int64).reshape(td.shape or [])
    return torch.tensor(td.data, dtype=torch.int64).reshape(td.shape or [])


def _float_tensor(td: TensorData) -> torch.Tensor:
    dtype = torch.float64 if td.dtype == "float64" else torch.float32
    values = torch.tensor([float(v) for v in td.data] if td.dtype in BOOL_DTYPES else td.data,
                          dtype=dtype)
    return values.reshape(td.shape or []).to(torch.float32)


def _first_bad(mask: torch.Tensor) -> str:
    index = mask.nonzero()[0].tolist()
    return str(index[0]) if len(index) == 1 else str(tuple(index))


# -- forward / forward_backward ------------------------------------------------


def prepare_forward(request: ForwardBackwardRequest, limits: ModelLimits) -> PreparedBatch:
    """Validate ``request`` against the loss and the model; return its tensors."""
    loss_fn = request.loss_fn
    config = check_loss_config(loss_fn, request.loss_fn_config)
    if request.top_k_logprobs > limits.vocab_size:
        raise InvalidRequest(f"top_k_logprobs {request.top_k_logprobs} exceeds the vocabulary "
                             f"size {limits.vocab_size}")
    if loss_fn == "dpo" and len(request.data) % 2:
        raise InvalidRequest(f"loss_fn 'dpo' needs an even number of data rows (chosen, "
                             f"rejected pairs); got {len(request.data)}")
    prepared: list[PreparedDatum] = []
    target_shape: tuple[int, int | None] | None = None  # (rank, K) of the first datum
    for index, datum in enumerate(request.data):
        item = _prepare_datum(index, datum, loss_fn, limits)
        shape = (item.target_rank, item.target.shape[1] if item.target_rank == 2 else None)
        if target_shape is None:
            target_shape = shape
        elif shape != target_shape:
            raise InvalidRequest(
                f"data[{index}].loss_fn_inputs.target_tokens: every datum of a request must "
                f"use the same target shape; data[0] has rank {target_shape[0]}"
                + (f" with K={target_shape[1]}" if target_shape[1] else "")
                + f", this one rank {shape[0]}" + (f" with K={shape[1]}" if shape[1] else ""))
        prepared.append(item)
    return PreparedBatch(loss_fn, config, request.top_k_logprobs, prepared)


def _prepare_datum(i: int, datum: Any, loss_fn: str, limits: ModelLimits) -> PreparedDatum:
    where = f"data[{i}]"
    tokens: list[int] = []
    for j, chunk in enumerate(datum.model_input.chunks):
        if isinstance(chunk, ImageChunk):
            if not limits.supports_images:
                raise InvalidRequest(f"{where}.model_input.chunks[{j}]: image chunks are not "
                                     f"supported: {limits.model_name} is a text-only model")
            raise InvalidRequest(f"{where}.model_input.chunks[{j}]: image input is not "
                                 "implemented by this trainer")
        tokens.extend(chunk.tokens)
    n = len(tokens)
    if n == 0:
        raise InvalidRequest(f"{where}.model_input: no tokens; a datum needs at least one")
    if n > limits.max_length:
        raise InvalidRequest(f"{where}.model_input: {n} tokens exceed the model's maximum "
                             f"sequence length {limits.max_length}")
    token_tensor = torch.tensor(tokens, dtype=torch.int64)
    out_of_vocab = (token_tensor < 0) | (token_tensor >= limits.vocab_size)
    if bool(out_of_vocab.any()):
        pos = int(out_of_vocab.nonzero()[0, 0])
        raise InvalidRequest(f"{where}.model_input: token id {tokens[pos]} at position {pos} is "
                             f"outside the vocabulary [0, {limits.vocab_size})")

    inputs: dict[str, TensorData] = datum.loss_fn_inputs
    required = LOSS_REQUIRED_INPUTS[loss_fn]
    missing = [key for key in required if key not in inputs]
    if missing:
        raise InvalidRequest(
            f"{where}.loss_fn_inputs: missing {', '.join(map(repr, missing))} (loss_fn "
            f"{loss_fn!r} requires {', '.join(required)})")

    field_name = f"{where}.loss_fn_inputs.target_tokens"
    target = _int_tensor(inputs["target_tokens"], field_name)
    if target.dim() == 2 and loss_fn != "cross_entropy":
        raise InvalidRequest(f"{field_name}: shape {list(target.shape)}: (N, K) targets are only "
                             f"supported by cross_entropy; {loss_fn!r} needs shape (N,)")
    if target.dim() not in (1, 2):
        raise InvalidRequest(f"{field_name}: shape {list(target.shape)} must be (N,) or (N, K)")
    if target.shape[0] != n:
        raise InvalidRequest(
            f"{field_name}: length {target.shape[0]} does not match model_input length {n} "
            "(position i of model_input predicts target_tokens[i])")
    if target.dim() == 2 and target.shape[1] < 1:
        raise InvalidRequest(f"{field_name}: shape {list(target.shape)} needs K >= 1")
    if bool((target >= limits.vocab_size).any()):
        pos = _first_bad(target >= limits.vocab_size)
        raise InvalidRequest(f"{field_name}: token id {int(target.max())} (at {pos}) is outside "
                             f"the vocabulary [0, {limits.vocab_size}); use a negative id to "
                             "mask a position")
    rank = target.dim()
    target2 = target if rank == 2 else target.unsqueeze(1)
    valid = target2 >= 0

    weights = _weights(where, inputs.get("weights"), target, valid, rank)
    per_pos: dict[str, torch.Tensor | None] = {}
    for key in PER_POSITION_INPUTS:
        per_pos[key] = _per_position(where, key, inputs.get(key), n)
    mask = per_pos["mask"] if per_pos["mask"] is not None else torch.ones(n)
    valid_any = valid.any(dim=1)
    bad_mask = valid_any & ~torch.isfinite(mask)
    if bool(bad_mask.any()):
        raise InvalidRequest(f"{where}.loss_fn_inputs.mask: not finite at position "
                             f"{_first_bad(bad_mask)}, which has a target")
    mask = torch.where(valid_any, mask, torch.zeros_like(mask))

    datum_out = PreparedDatum(token_tensor, target2, rank, weights, mask)
    if loss_fn in POLICY_LOSSES:
        _policy_inputs(where, datum_out, per_pos, valid[:, 0], n)
    elif loss_fn == "dpo":
        ref = per_pos["ref_logprobs"]
        assert ref is not None
        uses = valid[:, 0] & (weights[:, 0] != 0)
        bad = uses & ~torch.isfinite(ref)
        if bool(bad.any()):
            raise InvalidRequest(f"{where}.loss_fn_inputs.ref_logprobs: not finite (null/NaN/inf) "
                                 f"at position {_first_bad(bad)}, which has a weighted target")
        datum_out.ref_logprobs = torch.where(uses, ref, torch.zeros_like(ref))
    return datum_out


def _weights(where: str, td: TensorData | None, target: torch.Tensor, valid: torch.Tensor,
             rank: int) -> torch.Tensor:
    field_name = f"{where}.loss_fn_inputs.weights"
    if td is None:
        return valid.to(torch.float32)
    weights = _float_tensor(td)
    if list(weights.shape) != list(target.shape):
        raise InvalidRequest(f"{field_name}: shape {list(weights.shape)} must equal the shape of "
                             f"target_tokens {list(target.shape)}")
    bad = (target >= 0) & ~torch.isfinite(weights)
    if bool(bad.any()):
        raise InvalidRequest(f"{field_name}: not finite (null/NaN/inf) at {_first_bad(bad)}, "
                             "which has a target (weights may be null only where the target "
                             "is masked)")
    weights2 = weights if rank == 2 else weights.unsqueeze(1)
    return torch.where(valid, weights2, torch.zeros_like(weights2))


def _per_position(where: str, key: str, td: TensorData | None, n: int) -> torch.Tensor | None:
    if td is None:
        return None
    field_name = f"{where}.loss_fn_inputs.{key}"
    values = _float_tensor(td)
    allowed = [[n], [1]] if key == "advantages" else [[n]]
    if list(values.shape) not in allowed:
        shapes = " or ".join(str(s) for s in allowed)
        raise InvalidRequest(f"{field_name}: shape {list(values.shape)} must be {shapes} "
                             f"(model_input has {n} tokens)")
    return values.expand(n).clone() if values.shape[0] != n else values


def _policy_inputs(where: str, datum: PreparedDatum, per_pos: dict[str, torch.Tensor | None],
                   valid: torch.Tensor, n: int) -> None:
    adv = per_pos["advantages"]
    q = per_pos["logprobs"]
    assert adv is not None and q is not None
    coef = datum.weights[:, 0] * datum.mask
    counts = valid & (coef != 0)
    bad = counts & ~torch.isfinite(adv)
    if bool(bad.any()):
        raise InvalidRequest(f"{where}.loss_fn_inputs.advantages: not finite (null/NaN/inf) at "
                             f"position {_first_bad(bad)}, which has a target")
    adv = torch.where(counts, adv, torch.zeros_like(adv))
    active = policy_active(valid, coef, adv)
    bad = active & ~torch.isfinite(q)
    if bool(bad.any()):
        raise InvalidRequest(f"{where}.loss_fn_inputs.logprobs: not finite (null/NaN/inf) at "
                             f"position {_first_bad(bad)}, an active token (target, weight and "
                             "advantage all set)")
    datum.advantages = adv
    datum.logprobs = torch.where(active, q, torch.zeros_like(q))
