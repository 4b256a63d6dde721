"""Training behaviour through the server: SFT converges, runs stay independent,
normalisation modes, custom-loss path, outputs."""

from __future__ import annotations

import pytest
import torch

from tests.trainer.trainer_helpers import Trainer, datum

# A few fixed, learnable examples: repeated patterns over a small alphabet.
SFT_EXAMPLES = [
    [100 + (i % 5) for i in range(40)],
    [200 + (i % 7) for i in range(33)],
    [300 + (i % 3) * 2 for i in range(27)],
    [400 + (i % 4) for i in range(36)],
]


def test_twenty_sft_steps_halve_the_loss(trainer_server, run_id: str) -> None:
    trainer = Trainer(trainer_server.url, run_id)
    trainer.init(rank=8, seed=0)
    data = [datum(tokens) for tokens in SFT_EXAMPLES]
    losses = []
    for _ in range(20):
        losses.append(trainer.forward_backward(data)["loss"])
        trainer.optim_step(learning_rate=1e-2)
    final = trainer.forward(data)["loss"]
    assert final <= 0.5 * losses[0], f"loss went {losses[0]:.3f} -> {final:.3f}: {losses}"
    assert trainer.policy_version() == 20


def test_two_runs_train_independently(trainer_server, run_id: str) -> None:
    """Interleaved runs with different learning rates: each ends exactly where it
    would have ended alone."""
    data = [datum(tokens) for tokens in SFT_EXAMPLES[:2]]
    fast = Trainer(trainer_server.url, f"{run_id}-fast")
    slow = Trainer(trainer_server.url, f"{run_id}-slow")
    alone = Trainer(trainer_server.url, f"{run_id}-alone")
    for trainer in (fast, slow, alone):
        trainer.init(seed=2)
    for _ in range(3):
        fast.forward_backward(data)
        slow.forward_backward(data)  # fast's buffer must not absorb this
        fast.optim_step(learning_rate=1e-2)
        slow.optim_step(learning_rate=1e-4)
    for _ in range(3):
        alone.forward_backward(data)
        alone.optim_step(learning_rate=1e-4)
    fast_w, _ = fast.tensors("adapter")
    slow_w, _ = slow.tensors("adapter")
    alone_w, _ = alone.tensors("adapter")
    for key in slow_w:
        assert torch.equal(slow_w[key], alone_w[key]), key
    diff = sum(float((fast_w[k] - slow_w[k]).abs().sum()) for k in fast_w)
    assert diff > 1e-3


def test_custom_loss_path_skips_normalisation(trainer_server, run_id: str) -> None:
    """forward_backward_custom on the wire: a forward with zero weights, then a
    forward_backward whose weights are -dC/dlogprobs (negative, arbitrary)."""
    trainer = Trainer(trainer_server.url, run_id)
    trainer.init(seed=4)
    tokens = SFT_EXAMPLES[0][:12]
    targets = [*tokens[1:], -100]
    config = {"skip_token_normalization": True}
    zeros = [0.0] * len(tokens)
    first = trainer.forward([datum(tokens, targets, weights=zeros)], config=config)
    assert first["metrics"]["skip_token_normalization"] == 1.0
    logprobs = first["loss_fn_outputs"][0]["logprobs"]["data"]
    assert logprobs[-1] is None and all(v is not None for v in logprobs[:-1])

    weights = [(-1.0) ** i * 0.3 for i in range(len(tokens))]
    second = trainer.forward_backward([datum(tokens, targets, weights=weights)], config=config)
    assert second["metrics"]["skip_token_normalization"] == 1.0
    expected = -sum(w * lp for w, lp in zip(weights[:-1], logprobs[:-1], strict=True))
    count = sum(1 for w in weights[:-1] if w != 0)
    assert second["loss"] == pytest.approx(expected / count, rel=1e-5)
    grads, meta = trainer.tensors("gradients")
    assert meta["mode"] == "sum"

    # A token-normalised contribution cannot join the same step.
    mixed = trainer.op_outcome("forward_backward", {"data": [datum(tokens)]})
    assert mixed["status"] == "error" and mixed["error_class"] == "ValueError"
    assert "optim_step" in mixed["error"]
    unchanged, _ = trainer.tensors("gradients")
    assert all(torch.equal(unchanged[k], grads[k]) for k in grads)

    metrics = trainer.optim_step(learning_rate=1e-3, grad_clip_norm=0.0)["metrics"]
    assert metrics["grad_scale"] == 1.0  # applied without division
    flat = torch.cat([g.flatten() for g in grads.values()])
    assert metrics["grad_norm"] == pytest.approx(float(flat.norm()), rel=1e-5)


def test_top_k_and_sparse_targets_outputs(trainer_server, run_id: str) -> None:
    trainer = Trainer(trainer_server.url, run_id)
    trainer.init(seed=4)
    tokens = [11, 12, 13, 14, 15]
    dense = trainer.forward([datum(tokens)], top_k_logprobs=3)["loss_fn_outputs"][0]
    assert dense["top_k_logprobs"]["shape"] == [5, 3]
    assert dense["top_k_token_ids"]["shape"] == [5, 3]
    top = dense["top_k_logprobs"]["data"]
    ids = dense["top_k_token_ids"]["data"]
    assert top[-3:] == [None, None, None] and ids[-3:] == [-1, -1, -1]  # masked last position
    assert top[0] >= top[1] >= top[2]
    # At every position the target's logprob is at most that position's best (row i of
    # the flattened [5, 3] top-k starts at 3 * i).
    assert all(dense["logprobs"]["data"][i] <= top[3 * i] + 1e-6 for i in range(4))

    sparse_targets = [[12, 3, -1], [13, 4, 5], [14, 5, 6], [15, 6, 7], [-100, -100, -100]]
    sparse = trainer.forward([datum(tokens, sparse_targets)])["loss_fn_outputs"][0]
    assert sparse["logprobs"]["shape"] == [5, 3]
    values = sparse["logprobs"]["data"]
    assert values[2] is None and values[-3:] == [None, None, None]
    assert values[0] == pytest.approx(dense["logprobs"]["data"][0], rel=1e-6)


def test_empty_forward_backward_is_a_no_op(trainer_server, run_id: str) -> None:
    trainer = Trainer(trainer_server.url, run_id)
    trainer.init()
    result = trainer.forward_backward([])
    assert result["loss"] == 0.0 and result["loss_fn_outputs"] == []
    _, meta = trainer.tensors("gradients")
    assert float(meta["count"]) == 0.0


def test_sum_normalization_option_applies_summed_gradients(loops_home, tiny_model_dir,
                                                           run_id: str) -> None:
    """LOOPS_TRAINER_NORMALIZATION=sum (spec Q2), on an in-process engine."""
    from loops_runner.models.loading import load_base_model
    from loops_runner.models.registry import canonical_model_id
    from loops_runner.servers.trainer.engine import TrainerEngine
    from loops_runner.servers.trainer.validation import prepare_forward
    from loops_runner.wire.training import AdamParams, ForwardBackwardRequest

    loaded = load_base_model("tiny", home=loops_home, device="cpu", dtype="float32")
    engine = TrainerEngine(loaded, loops_home, normalization="sum",
                           base_model_id=canonical_model_id("tiny", loops_home))
    engine.init_run(run_id, 2)
    request = ForwardBackwardRequest.model_validate({"data": [datum(SFT_EXAMPLES[1])]})
    engine.forward_backward(run_id, prepare_forward(request, engine.limits), backward=True)
    metrics = engine.optim_step(run_id, AdamParams(grad_clip_norm=0.0)).metrics
    assert metrics is not None
    assert metrics["grad_scale"] == 1.0 and metrics["num_loss_tokens"] == 32.0
    with pytest.raises(ValueError, match="LOOPS_TRAINER_NORMALIZATION"):
        TrainerEngine(loaded, loops_home, normalization="mean", base_model_id="x")
