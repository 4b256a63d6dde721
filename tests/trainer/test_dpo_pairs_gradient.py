"""The dpo recipe's datums, through the trainer's ``dpo`` loss, match the DPO formula.

The recipe builds (chosen, rejected) datums from rendered preference pairs with
response-only weights and reference logprobs. Here the DPO loss is computed
independently from the same pairs: full-sequence log-probabilities on an
in-process PEFT copy of the run's adapter, summed over the response (after the
prompt, through the end-of-turn token), ``-log sigmoid(beta * ((c - c_ref) -
(r - r_ref)))`` per pair. Loss and gradient must agree to 1e-5.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from loops_runner.data.chat import prompt_tokens
from loops_runner.data.preferences import RenderedPair, render_pair, task_pairs
from loops_runner.data.reference_logprobs import ReferenceLogprobs
from loops_runner.recipes.dpo import pair_datums
from tests.trainer.reference import ReferenceModel, relative_error
from tests.trainer.trainer_helpers import Trainer, datum

RANK = 4
BETA = 0.5


@pytest.fixture(scope="module")
def reference(loops_home: Path, tiny_model_dir: Path) -> ReferenceModel:
    from loops_runner.models.loading import load_base_model

    loaded = load_base_model("tiny", home=loops_home, device="cpu", dtype="float32")
    return ReferenceModel(loaded.model, rank=RANK, alpha=32)


def _sequence_logprobs(model: ReferenceModel, tokens: list[int]) -> torch.Tensor:
    """Entry i: log p(tokens[i] | tokens[:i]) for i >= 1 (entry 0 is unused)."""
    logits = model.model(input_ids=torch.tensor([tokens])).logits[0].float()
    picked = F.log_softmax(logits[:-1], dim=-1).gather(1, torch.tensor(tokens[1:]).unsqueeze(1))
    return torch.cat([torch.zeros(1), picked[:, 0]])


def test_recipe_pairs_match_the_dpo_formula(trainer_server, run_id: str, tiny_model_dir: Path,
                                            reference: ReferenceModel) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    trainer = Trainer(trainer_server.url, run_id)
    trainer.init(rank=RANK, seed=11)
    # One step first, so LoRA B is nonzero and every adapter tensor gets a gradient.
    trainer.forward_backward([datum(list(range(5, 30)))])
    trainer.optim_step(learning_rate=2e-2)
    adapter, _ = trainer.tensors("adapter")
    reference.load(adapter)

    pairs_P = [render_pair(tokenizer, p, 128) for p in task_pairs(3, "train", seed=4)]
    rendered: list[RenderedPair] = [p for p in pairs_P if p is not None]
    assert len(rendered) == 3
    # A reference unlike the policy (current logprobs plus noise), so margins are nonzero.
    gen = torch.Generator().manual_seed(0)
    by_sequence = {}
    for pair in rendered:
        for example in (pair.chosen, pair.rejected):
            with torch.no_grad():
                current = _sequence_logprobs(reference, example.tokens)
            by_sequence[tuple(example.tokens)] = (
                current + 0.3 * torch.randn(len(current), generator=gen)).tolist()
    ref = ReferenceLogprobs(by_sequence, computed=0, path=Path("unused"))
    data = [d.model_dump(mode="json") for d in pair_datums(rendered, ref)]

    result = trainer.forward_backward(data, "dpo", {"beta": BETA})
    grads, meta = trainer.tensors("gradients")

    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    total = torch.zeros(())
    for pair in rendered:
        start = len(prompt_tokens(tokenizer, pair.pair.prompt))  # first response token
        sums = []
        for example in (pair.chosen, pair.rejected):
            lp = _sequence_logprobs(reference, example.tokens)
            ref_lp = torch.tensor(by_sequence[tuple(example.tokens)])
            end = len(example.tokens) - example.tokens[::-1].index(end_of_turn)
            sums.append((lp[start:end] - ref_lp[start:end]).sum())
        total = total - F.logsigmoid(BETA * (sums[0] - sums[1]))
    total.backward()
    error = relative_error(grads, reference.gradients())
    assert error < 1e-5, f"relative gradient error {error:.2e}"
    assert float(meta["count"]) == len(rendered)  # normalised per pair, not per token
    assert result["loss"] == pytest.approx(float(total.detach()) / len(rendered), rel=1e-5)
