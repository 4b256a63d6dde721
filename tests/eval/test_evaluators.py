"""Sampling evaluator: pass@k math, user JSONL + dotted scorer, n samples on the real sampler."""

from __future__ import annotations

import asyncio
import json

import pytest
from pydantic import ValidationError

from loops_runner.eval import EvalTarget, SamplingEvaluator, run_evaluators
from loops_runner.eval.evaluators import EVALS_FILE, load_scorer, pass_at_k


def test_pass_at_k_is_the_unbiased_estimator() -> None:
    assert pass_at_k(4, 0, 1) == 0.0
    assert pass_at_k(4, 4, 2) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # C(3,2)/C(4,2) miss both
    assert pass_at_k(5, 2, 4) == 1.0  # only 3 wrong: any 4 hold a right one


def test_bad_evaluator_settings_name_the_field() -> None:
    with pytest.raises(ValidationError, match=r"pass_at \[4\] must lie between 1 and n=2"):
        SamplingEvaluator(n=2, pass_at=[4])
    with pytest.raises(ValidationError, match="needs a scorer"):
        SamplingEvaluator(source="rows.jsonl")
    with pytest.raises(ValueError, match=r"scorer='tests.eval.scorers.missing': "
                                         r"tests.eval.scorers has no 'missing'; it defines: "):
        load_scorer("tests.eval.scorers.missing")
    # Refused when the config is read (before anything is provisioned), naming where.
    from loops_runner.recipes.sft import Config
    from loops_runner.runner.config import ConfigError, validate_section

    with pytest.raises(ConfigError, match=r"^invalid config: recipe.evaluators.0.scorer="
                                          r"'nowhere:score': no module named 'nowhere'"):
        validate_section(Config, {"evaluators": [{"kind": "sampling", "source": "r.jsonl",
                                                   "scorer": "nowhere:score"}]}, "recipe.")


def test_user_rows_and_scorer_with_n_samples_on_the_sampler(trainer_server, sampler_server,
                                                           tiny_model_dir, tmp_path) -> None:
    from transformers import AutoTokenizer

    from loops_runner.sdk import ServiceClient

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"Say something about {word}.",
                                        "parity": i % 2}) + "\n"
                            for i, word in enumerate(["cats", "rain", "maps", "tea", "sand"])))
    cfg = SamplingEvaluator(name="even", source=str(rows), scorer="tests.eval.scorers.even_length",
                            num_prompts=5, n=4, pass_at=[1, 2, 4], temperature=1.0,
                            max_tokens=6, seed=3)
    sampler = ServiceClient.local(trainer_url=trainer_server.url,
                                  sampler_url=sampler_server.url).create_sampling_client("tiny")
    target = EvalTarget(model="tiny", tokenizer=AutoTokenizer.from_pretrained(tiny_model_dir),
                        training_client=None, sampler=lambda: sampler)
    result = asyncio.run(run_evaluators([cfg], target, step=7, run_dir=tmp_path))[0]
    metrics = result.metrics
    assert set(metrics) == {"eval/even", "eval/even/pass@1", "eval/even/pass@2",
                            "eval/even/pass@4"}
    assert metrics["eval/even/pass@1"] == pytest.approx(metrics["eval/even"])
    assert metrics["eval/even/pass@1"] <= metrics["eval/even/pass@2"] <= metrics[
        "eval/even/pass@4"]
    assert [s["prompt"] for s in result.samples] == [json.loads(line)["prompt"]
                                                     for line in rows.read_text().splitlines()]
    for row, sample in zip(rows.read_text().splitlines(), result.samples, strict=True):
        expected = 1.0 if len(sample["completion"]) % 2 == json.loads(row)["parity"] else 0.0
        assert sample["score"] == expected
    record = json.loads((tmp_path / EVALS_FILE).read_text())
    assert record["step"] == 7 and record["model"] == "tiny"
    assert record["settings"] == {"temperature": 1.0, "top_p": 1.0, "max_tokens": 6, "n": 4,
                                  "seed": 3, "num_prompts": 5, "source": str(rows)}
