"""One micro-batch through the model: padded ids in, the loss part and per-datum outputs out.

The engine plans micro-batches (``batching``) and owns the gradient buffer;
this is the math of one of them: the logits at positions that have a target,
log-probabilities of the targets (one or K per position), the loss
(``losses``), and each datum's outputs (``logprobs`` shaped like its targets,
null where it has none, plus the top-k alternatives when asked for).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from loops_runner.servers.trainer.batching import MicroBatch
from loops_runner.servers.trainer.losses import FlatInputs, LossPart, compute_loss
from loops_runner.servers.trainer.validation import PreparedBatch, PreparedDatum
from loops_runner.wire.tensors import TensorData


def micro_batch(micro: MicroBatch, batch: PreparedBatch, outputs: list[dict[str, TensorData]],
                logits_at: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                device: torch.device) -> LossPart:
    """Forward one micro-batch; fill ``outputs`` for its rows and return its loss part.

    ``logits_at(ids, index)`` gives the fp32 logits of the flattened
    ``(row * width + position)`` ``index`` of the right-padded ``ids``.
    """
    rows: list[PreparedDatum] = [batch.data[i] for i in micro.indices]
    width = micro.max_len
    ids = torch.zeros(len(rows), width, dtype=torch.int64)
    flat_index, seg = [], []
    for r, datum in enumerate(rows):
        ids[r, : datum.length] = datum.tokens
        positions = datum.valid_any.nonzero().squeeze(1)
        flat_index.append(positions + r * width)
        seg.append(torch.full((positions.numel(),), r, dtype=torch.int64))
    index = torch.cat(flat_index).to(device)
    logits = logits_at(ids.to(device), index)  # (P, V) float32

    def gather(attr: str) -> torch.Tensor | None:
        parts = [getattr(d, attr) for d in rows]
        if parts[0] is None:
            return None
        return torch.cat([p[d.valid_any] for p, d in zip(parts, rows, strict=True)]
                         ).to(device)

    targets = gather("target")
    assert targets is not None
    safe_targets = targets.clamp(min=0)
    if targets.shape[1] == 1:
        # The fused log-softmax + NLL kernel: ~15% cheaper than
        # logsumexp + gather on full-vocabulary logits, same values.
        lp = -F.cross_entropy(logits, safe_targets[:, 0], reduction="none").unsqueeze(1)
    else:
        lp = logits.gather(1, safe_targets) - torch.logsumexp(logits, dim=-1, keepdim=True)
    flat = FlatInputs(
        seg=torch.cat(seg).to(device), num_datums=len(rows), valid=targets >= 0,
        weights=gather("weights"), mask=gather("mask"),  # type: ignore[arg-type]
        logprobs=gather("logprobs"), advantages=gather("advantages"),
        ref_logprobs=gather("ref_logprobs"))
    part = compute_loss(batch.loss_fn, lp, flat, batch.config)

    # Per-datum outputs: real logprobs wherever a target exists, NaN (null) elsewhere.
    lp_cpu = lp.detach().float().cpu()
    top_values = top_ids = None
    if batch.top_k:
        detached = logits.detach()
        # log Z per row, recovered from any target's logit and logprob.
        lse = detached.gather(1, safe_targets[:, :1]) - lp.detach()[:, :1]
        top = detached.topk(batch.top_k, dim=-1)
        top_values = (top.values - lse).float().cpu()
        top_ids = top.indices.cpu()
    offset = 0
    for r, datum in enumerate(rows):
        count = int(datum.valid_any.sum())
        full = torch.full(datum.target.shape, math.nan)
        full[datum.valid_any] = lp_cpu[offset: offset + count]
        full[datum.target < 0] = math.nan
        if datum.target_rank == 1:
            full = full[:, 0]
        out = {"logprobs": tensor_data(full, "float32")}
        if top_values is not None and top_ids is not None:
            values = torch.full((datum.length, batch.top_k), math.nan)
            token_ids = torch.full((datum.length, batch.top_k), -1, dtype=torch.int64)
            values[datum.valid_any] = top_values[offset: offset + count]
            token_ids[datum.valid_any] = top_ids[offset: offset + count]
            out["top_k_logprobs"] = tensor_data(values, "float32")
            out["top_k_token_ids"] = tensor_data(token_ids, "int64")
        outputs[micro.indices[r]] = out
        offset += count
    return part


def tensor_data(tensor: torch.Tensor, dtype: str) -> TensorData:
    # model_construct: the values come from a tensor, re-validating them one by
    # one would only cost time. NaN becomes null when serialised.
    return TensorData.model_construct(data=tensor.flatten().tolist(), dtype=dtype,
                                      shape=list(tensor.shape))
