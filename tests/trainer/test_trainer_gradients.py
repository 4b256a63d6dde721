"""The server's gradients and updates equal the spec's formulas computed directly.

For each loss: warm a fresh run up one step (so LoRA B is nonzero and every
adapter tensor has a gradient), read its adapter, submit forward_backward,
read the accumulated (summed, not yet normalised) gradient and counter from
the server, and compare with autograd through ``reference.spec_loss`` on an
in-process PEFT copy of the same adapter: 1e-5 relative (global norm).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from tests.trainer.reference import ReferenceModel, relative_error, spec_loss
from tests.trainer.trainer_helpers import Trainer, datum

RANK = 4
LENGTHS = (9, 17, 12, 23)
VOCAB = 4096


@pytest.fixture(scope="module")
def reference(loops_home, tiny_model_dir) -> ReferenceModel:  # type: ignore[no-untyped-def]
    from loops_runner.models.loading import load_base_model

    loaded = load_base_model("tiny", home=loops_home, device="cpu", dtype="float32")
    return ReferenceModel(loaded.model, rank=RANK, alpha=32)


def _tokens(seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=gen).tolist() for n in LENGTHS]


def _warm_run(trainer: Trainer) -> dict[str, torch.Tensor]:
    trainer.init(rank=RANK, seed=7)
    trainer.forward_backward([datum(t) for t in _tokens(99)])
    trainer.optim_step(learning_rate=2e-2)
    adapter, _ = trainer.tensors("adapter")
    assert all(float(t.abs().sum()) > 0 for t in adapter.values()), "warm-up left zeros"
    return adapter


def _current_logprobs(reference: ReferenceModel, tokens: list[int]) -> list[float]:
    with torch.no_grad():
        shifted = torch.tensor([*tokens[1:], 0]).unsqueeze(1)
        return reference.logprobs(tokens, shifted)[:, 0].tolist()


def _case(loss_fn: str, reference: ReferenceModel) -> tuple[list[dict[str, Any]], dict]:
    gen = torch.Generator().manual_seed(17 + len(loss_fn))
    seqs = _tokens(5)
    data = []
    if loss_fn == "cross_entropy":
        for i, tokens in enumerate(seqs):
            targets = [*tokens[1:], -100]
            weights: list[float | None] = (torch.randn(len(tokens), generator=gen) * 2).tolist()
            weights[-1] = None  # null where masked is allowed
            if i == 1:
                targets[3] = -1  # masked in the middle
                weights[3] = None
            data.append(datum(tokens, targets, weights=weights))
        return data, {}
    if loss_fn == "cross_entropy_nk":
        for tokens in seqs:
            n = len(tokens)
            targets = torch.randint(0, VOCAB, (n, 3), generator=gen)
            targets[n - 1, :] = -100
            targets[0, 2] = -1
            weights = torch.rand(n, 3, generator=gen) - 0.3
            data.append(datum(tokens, targets.tolist(), weights=weights.tolist()))
        return data, {}
    if loss_fn == "dpo":
        for i, tokens in enumerate(seqs):
            n = len(tokens)
            weights = [0.0] * 3 + [1.0] * (n - 4) + [0.0]
            ref = (torch.tensor(_current_logprobs(reference, tokens))
                   + 0.5 * torch.randn(n, generator=gen)).tolist()
            data.append(datum(tokens, weights=weights, ref_logprobs=ref))
            if i == 0:
                data[-1]["loss_fn_inputs"]["ref_logprobs"]["data"][-1] = None  # no target there
        return data, {"beta": 0.3, "label_smoothing": 0.1}
    # Policy losses: sampler logprobs near the current policy, so ratios vary
    # around 1 and the clips engage; some zero advantages, a mask, a (1,)
    # advantage broadcast, and (for dppo) sampler probabilities high enough
    # that the total-variation mask drops tokens.
    for i, tokens in enumerate(seqs):
        n = len(tokens)
        q = (torch.tensor(_current_logprobs(reference, tokens))
             + 0.4 * torch.randn(n, generator=gen))
        if loss_fn == "dppo":
            q[::3] = math.log(0.6)
        q_list: list[float | None] = q.tolist()
        q_list[-1] = None  # masked position: null is fine
        advantages: list[float | None] = torch.randn(n, generator=gen).tolist()
        advantages[2] = 0.0
        inputs: dict[str, Any] = {"logprobs": q_list, "advantages": advantages}
        if i == 2:
            inputs["advantages"] = [-0.7]  # one advantage for the whole sequence
        if i == 3:
            inputs["mask"] = [0.0 if j % 4 == 0 else 1.0 for j in range(n)]
            inputs["weights"] = [0.5] * n
        data.append(datum(tokens, **inputs))
    configs = {"ppo": {"clip_low_threshold": 0.85, "clip_high_threshold": 1.15},
               "cispo": {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1},
               "dro": {"beta": 0.2},
               "dppo": {"kl_tau": 0.05, "adv_tau": 0.8}}
    return data, configs.get(loss_fn, {})


LOSSES = ["cross_entropy", "cross_entropy_nk", "importance_sampling", "ppo", "cispo", "dro",
          "dpo", "dppo"]


@pytest.mark.parametrize("case", LOSSES)
def test_gradient_matches_spec_formula(case: str, trainer_server, run_id: str,
                                       reference: ReferenceModel) -> None:
    trainer = Trainer(trainer_server.url, run_id)
    adapter = _warm_run(trainer)
    reference.load(adapter)
    loss_fn = "cross_entropy" if case == "cross_entropy_nk" else case
    data, config = _case(case, reference)

    result = trainer.forward_backward(data, loss_fn, config or None)
    grads, meta = trainer.tensors("gradients")

    total, count = spec_loss(reference, data, loss_fn, config)
    total.backward()
    want = reference.gradients()
    error = relative_error(grads, want)
    assert error < 1e-5, f"{case}: relative gradient error {error:.2e}"
    assert float(meta["count"]) == count
    assert count > 0
    assert result["loss"] == pytest.approx(float(total.detach()) / count, rel=1e-5, abs=1e-6)
    # One output per datum, logprobs shaped like the targets, null where masked.
    assert len(result["loss_fn_outputs"]) == len(data)
    for item, out in zip(data, result["loss_fn_outputs"], strict=True):
        assert out["logprobs"]["shape"] == item["loss_fn_inputs"]["target_tokens"]["shape"]
        flat_targets = item["loss_fn_inputs"]["target_tokens"]["data"]
        for target, value in zip(flat_targets, out["logprobs"]["data"], strict=True):
            assert (value is None) == (target < 0)
    if case == "dppo":
        assert result["metrics"]["is_masked_low"] > 0
    if case == "ppo":
        assert 0 < result["metrics"]["ppo/clip_fraction"] < 1
    if case == "dpo":
        assert {"dpo/accuracy", "dpo/margin", "dpo/chosen_reward",
                "dpo/rejected_reward"} <= set(result["metrics"])


def test_optim_step_is_adamw_of_normalised_clipped_gradient(trainer_server, run_id: str) -> None:
    """Two steps against torch.optim.AdamW fed the server's gradient / token count."""
    trainer = Trainer(trainer_server.url, run_id)
    trainer.init(rank=RANK, seed=3)
    params, _ = trainer.tensors("adapter")
    ref_params = {k: torch.nn.Parameter(v.clone()) for k, v in params.items()}
    hp = {"learning_rate": 3e-3, "beta1": 0.8, "beta2": 0.9, "eps": 1e-8,
          "weight_decay": 0.1, "grad_clip_norm": 0.05}
    optimizer = torch.optim.AdamW(ref_params.values(), lr=hp["learning_rate"],
                                  betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"],
                                  weight_decay=hp["weight_decay"])
    for step, seed in enumerate((11, 12), start=1):
        trainer.forward_backward([datum(t) for t in _tokens(seed)])
        grads, meta = trainer.tensors("gradients")
        count = float(meta["count"])
        assert count == sum(n - 1 for n in LENGTHS)
        for key, param in ref_params.items():
            param.grad = grads[key] / count
        norm = torch.nn.utils.clip_grad_norm_(list(ref_params.values()), hp["grad_clip_norm"])
        optimizer.step()
        metrics = trainer.optim_step(**hp)["metrics"]
        assert metrics["step"] == step
        assert metrics["grad_norm"] == pytest.approx(float(norm), rel=1e-5)
        assert metrics["grad_norm"] > hp["grad_clip_norm"]  # the clip really engaged
        got, _ = trainer.tensors("adapter")
        want = {k: p.detach() for k, p in ref_params.items()}
        update_err = relative_error({k: got[k] - params[k] for k in got},
                                    {k: want[k] - params[k] for k in want})
        assert update_err < 1e-5, f"step {step}: update differs by {update_err:.2e}"
        with torch.no_grad():  # continue both from the server's exact weights
            for key, param in ref_params.items():
                param.copy_(got[key])
        params = {k: v.clone() for k, v in got.items()}


def test_chunked_submission_equals_single(trainer_server, run_id: str) -> None:
    data = [datum(t) for t in _tokens(21)]
    single = Trainer(trainer_server.url, f"{run_id}-single")
    chunked = Trainer(trainer_server.url, f"{run_id}-chunked")
    for trainer in (single, chunked):
        trainer.init(rank=RANK, seed=5)
    single.forward_backward(data)
    chunked.forward_backward(data[:1])
    chunked.forward_backward(data[1:])
    grads_single, meta_single = single.tensors("gradients")
    grads_chunked, meta_chunked = chunked.tensors("gradients")
    assert meta_single["count"] == meta_chunked["count"]
    assert relative_error(grads_chunked, grads_single) < 1e-6
    for trainer in (single, chunked):
        trainer.optim_step(learning_rate=1e-2)
    after_single, _ = single.tensors("adapter")
    after_chunked, _ = chunked.tensors("adapter")
    for key in after_single:
        torch.testing.assert_close(after_chunked[key], after_single[key], rtol=1e-5, atol=1e-7)
