"""Sampling and NLL evaluators: configs, the math, and the ``evals.jsonl`` record."""

from __future__ import annotations

import asyncio
import difflib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

EVALS_FILE = "evals.jsonl"
Scorer = Callable[[dict[str, Any], str], float]
# Sources an evaluator can read besides a .jsonl of rows.
TASKS, HELDOUT, AUTO = "tasks", "heldout", "auto"
# Answers to the registry's questions are short; answers to a user's held-out rows get
# room for their longest reference (in tokens) plus this, up to the cap.
TASKS_MAX_TOKENS = 16
REFERENCE_SLACK_TOKENS = 8
REFERENCE_MAX_TOKENS = 256


class SamplingEvaluator(BaseModel):
    """Generate answers to task prompts and score them."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["sampling"] = "sampling"
    name: str = "accuracy"            # metric name: eval/<name>, eval/<name>/pass@k
    # auto: the run's own held-out rows when the recipe trains on the user's data, else
    # the task registry | tasks: the registry's held-out split | heldout: the run's
    # held-out rows (exact match + similarity to the reference) | a .jsonl of rows
    source: str = AUTO
    scorer: str | None = None         # module:function score(row, completion); default: registry
    families: list[str] | None = None  # registry families (null = all)
    num_prompts: int = Field(default=210, ge=1)  # 30 per family of the default task mix
    n: int = Field(default=1, ge=1)   # samples per prompt
    pass_at: list[int] = Field(default_factory=lambda: [1])
    temperature: float = Field(default=0.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    # null: 16 on the task registry; on held-out rows the longest reference + 8 (<= 256)
    max_tokens: int | None = Field(default=None, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _pass_at_fits(self) -> SamplingEvaluator:
        too_big = [k for k in self.pass_at if not 1 <= k <= self.n]
        if too_big:
            raise ValueError(f"pass_at {too_big} must lie between 1 and n={self.n}")
        if self.source not in (TASKS, HELDOUT, AUTO) and self.scorer is None:
            raise ValueError(f"source {self.source!r} needs a scorer: a dotted path to "
                             "score(row, completion) -> float")
        if self.scorer is not None:
            load_scorer(self.scorer)  # a scorer that does not load stops before provisioning
        return self

    def settings(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_p": self.top_p,
                "max_tokens": self.max_tokens, "n": self.n, "seed": self.seed,
                "num_prompts": self.num_prompts, "source": self.source}


class NllEvaluator(BaseModel):
    """Mean negative log-likelihood per assistant token on held-out conversations."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["nll"] = "nll"
    name: str = "task_nll"
    source: str = "tasks"             # "tasks" (registry held-out answers) or a .jsonl of chats
    num_examples: int = Field(default=64, ge=1)
    max_length: int = Field(default=256, ge=2)
    batch_size: int = Field(default=32, ge=1)

    def settings(self) -> dict[str, Any]:
        return {"num_examples": self.num_examples, "source": self.source}


EvaluatorConfig = Annotated[SamplingEvaluator | NllEvaluator, Field(discriminator="kind")]


@dataclass
class EvalTarget:
    """The weights under evaluation: a trainer run holding them and a sampler serving them."""

    model: str  # base model name, checkpoint path or "step N of <run>"
    tokenizer: Any
    training_client: Any
    sampler: Callable[[], Any]  # returns a sampling client serving exactly these weights
    # The run's held-out conversations when it trains on the user's own data: what
    # ``source: auto`` evaluates (None: the run trains on the task registry).
    heldout: list[dict[str, Any]] | None = None


@dataclass
class EvalResult:
    evaluator: str
    model: str
    metrics: dict[str, float]
    settings: dict[str, Any]
    step: int | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def record(self) -> dict[str, Any]:
        return {"evaluator": self.evaluator, "model": self.model, "step": self.step,
                "metrics": self.metrics, "settings": self.settings,
                "seconds": round(self.seconds, 3), "samples": self.samples[:8]}


# -- rows and scorers ------------------------------------------------------------


def load_scorer(path: str, field: str = "scorer") -> Scorer:
    from loops_runner.plugins import load_callable

    return load_callable(path, field, "score", call=("row", "completion"))[1]


def task_rows(cfg: SamplingEvaluator | NllEvaluator, count: int) -> list[dict[str, Any]]:
    if cfg.source in (TASKS, AUTO):
        from loops_runner.tasks import sample_rows

        families = getattr(cfg, "families", None)
        return sample_rows(count, split="heldout", families=families, unique=True,
                           seed=getattr(cfg, "seed", 0))
    from loops_runner.data.sources import load_rows

    return load_rows(cfg.source)[:count]


def heldout_rows(conversations: Sequence[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """Rows of the run's held-out chats: the prompt up to the last assistant turn, and that
    turn as the reference answer."""
    rows = []
    for chat in conversations[:count]:
        messages = chat["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        rows.append({"messages": messages[:last], "prompt": messages[last - 1]["content"]
                     if last else "", "answer": messages[last]["content"]})
    return rows


def reference_match(row: dict[str, Any], completion: str) -> float:
    """Normalised exact match of ``completion`` with the row's reference answer."""
    from loops_runner.tasks.scoring import normalise

    return 1.0 if normalise(completion) == normalise(str(row["answer"])) else 0.0


def reference_similarity(row: dict[str, Any], completion: str) -> float:
    """How much of the reference the completion gets right (0-1, character level)."""
    from loops_runner.tasks.scoring import normalise

    return difflib.SequenceMatcher(None, normalise(completion),
                                   normalise(str(row["answer"]))).ratio()


def row_messages(row: dict[str, Any]) -> list[dict[str, str]]:
    if row.get("messages"):
        return [m for m in row["messages"] if m["role"] != "assistant"] or row["messages"]
    from loops_runner.tasks import as_messages

    return as_messages(row)


def pass_at_k(n: int, correct: int, k: int) -> float:
    """Unbiased pass@k of one prompt: chance that k of its n samples hold a correct one."""
    if n - correct < k:
        return 1.0
    return 1.0 - math.comb(n - correct, k) / math.comb(n, k)


# -- running -----------------------------------------------------------------------


async def _sample_all(sampler: Any, prompts: Sequence[Any], n: int, params: Any) -> list[Any]:
    # All prompts in flight at once: the sampler batches them into one decode.
    return list(await asyncio.gather(*(sampler.sample_async(p, n, params) for p in prompts)))


def _rows_and_scorer(cfg: SamplingEvaluator, target: EvalTarget
                     ) -> tuple[list[dict[str, Any]], Scorer, bool]:
    """The rows to answer, their scorer, and whether they are the run's held-out rows."""
    from loops_runner.tasks import score as registry_score

    on_heldout = cfg.source == HELDOUT or (cfg.source == AUTO and target.heldout is not None)
    if on_heldout:
        if target.heldout is None:
            raise ValueError(f"evaluator {cfg.name!r}: source {HELDOUT!r} needs a recipe "
                             "that holds out rows of its data (sft)")
        rows = heldout_rows(target.heldout, cfg.num_prompts)
        return rows, load_scorer(cfg.scorer) if cfg.scorer else reference_match, True
    rows = task_rows(cfg, cfg.num_prompts)
    return rows, load_scorer(cfg.scorer) if cfg.scorer else registry_score, False


def _max_tokens(cfg: SamplingEvaluator, rows: list[dict[str, Any]], tokenizer: Any,
                on_heldout: bool) -> int:
    if cfg.max_tokens is not None:
        return cfg.max_tokens
    if not on_heldout:
        return TASKS_MAX_TOKENS
    longest = max(len(tokenizer.encode(str(row["answer"]), add_special_tokens=False))
                  for row in rows)
    return min(REFERENCE_MAX_TOKENS, longest + REFERENCE_SLACK_TOKENS)


async def run_sampling(cfg: SamplingEvaluator, target: EvalTarget) -> EvalResult:
    from loops_runner.data.chat import prompt_tokens
    from loops_runner.sdk import ModelInput, SamplingParams

    started = time.monotonic()
    rows, scorer, on_heldout = _rows_and_scorer(cfg, target)
    prompts = [ModelInput.from_ints(prompt_tokens(target.tokenizer, row_messages(row)))
               for row in rows]
    max_tokens = _max_tokens(cfg, rows, target.tokenizer, on_heldout)
    params = SamplingParams(max_tokens=max_tokens, temperature=cfg.temperature,
                            top_p=cfg.top_p, seed=cfg.seed)
    responses = await _sample_all(target.sampler(), prompts, cfg.n, params)
    scores_P: list[list[float]] = []
    similarity_P: list[float] = []
    samples = []
    for row, response in zip(rows, responses, strict=True):
        completions = [target.tokenizer.decode(s.tokens, skip_special_tokens=True).strip()
                       for s in response.sequences]
        scores = [float(scorer(row, completion)) for completion in completions]
        scores_P.append(scores)
        if on_heldout:
            similarity_P.extend(reference_similarity(row, c) for c in completions)
        samples.append({"prompt": row.get("prompt", ""), "answer": row.get("answer"),
                        "completion": completions[0], "score": scores[0],
                        **({"family": row["family"]} if "family" in row else {})})
    flat = [s for scores in scores_P for s in scores]
    metrics = {f"eval/{cfg.name}": sum(flat) / len(flat)}
    if similarity_P:
        metrics[f"eval/{cfg.name}/similarity"] = sum(similarity_P) / len(similarity_P)
    # Task rows carry their family: a per-family figure shows where a change
    # came from (one family's gain can hide another's loss in the mean).
    by_family: dict[str, list[float]] = {}
    for row, scores in zip(rows, scores_P, strict=True):
        if isinstance(row.get("family"), str):
            by_family.setdefault(row["family"], []).extend(scores)
    if len(by_family) > 1:
        for family, values in sorted(by_family.items()):
            metrics[f"eval/{cfg.name}/{family}"] = sum(values) / len(values)
    for k in cfg.pass_at:
        if k == 1 and cfg.n == 1:
            continue
        values = [pass_at_k(cfg.n, sum(1 for s in scores if s >= 1.0), k) for scores in scores_P]
        metrics[f"eval/{cfg.name}/pass@{k}"] = sum(values) / len(values)
    settings = {**cfg.settings(), "max_tokens": max_tokens,
                "source": HELDOUT if on_heldout else TASKS if cfg.source == AUTO else cfg.source}
    return EvalResult(cfg.name, target.model, metrics, settings, samples=samples,
                      seconds=time.monotonic() - started)


async def eval_nll(training_client: Any, examples: Sequence[Any], batch_size: int) -> float:
    """Mean negative log-likelihood per trained token of rendered ``examples``."""
    futures = [training_client.forward([e.to_datum() for e in examples[i:i + batch_size]],
                                       "cross_entropy")
               for i in range(0, len(examples), batch_size)]
    total, count = 0.0, 0.0
    for start, future in zip(range(0, len(examples), batch_size), futures, strict=True):
        output_B = (await future).loss_fn_outputs
        for example, output in zip(examples[start:start + batch_size], output_B, strict=True):
            # logprobs[i] scores token i+1, hence the weights shifted by one.
            for logprob, weight in zip(output["logprobs"].tolist(), example.weights[1:],
                                       strict=True):
                if weight and not math.isnan(logprob):
                    total -= weight * logprob
                    count += weight
    return total / max(count, 1.0)


async def run_nll(cfg: NllEvaluator, target: EvalTarget) -> EvalResult:
    from loops_runner.data.chat import render
    from loops_runner.tasks import as_conversation

    started = time.monotonic()
    rows = task_rows(cfg, cfg.num_examples)
    chats = [as_conversation(r)["messages"] if cfg.source == TASKS else r["messages"]
             for r in rows]
    examples = [render(target.tokenizer, chat, "assistant", cfg.max_length) for chat in chats]
    examples = [e for e in examples if e.trained_tokens > 0]
    if target.training_client is None:
        raise ValueError(f"evaluator {cfg.name!r} (nll) needs a trainer holding the weights; "
                         f"{target.model} is only a sampler")
    value = await eval_nll(target.training_client, examples, cfg.batch_size)
    return EvalResult(cfg.name, target.model, {f"eval/{cfg.name}": value}, cfg.settings(),
                      seconds=time.monotonic() - started)


async def run_evaluators(evaluators: Sequence[SamplingEvaluator | NllEvaluator],
                         target: EvalTarget, *, step: int | None, run_dir: Path | None,
                         prefix: str = "eval/") -> list[EvalResult]:
    """Run each evaluator on ``target``; append every result (with settings) to evals.jsonl.

    ``prefix`` names what is scored when it is not the run's own weights
    (``eval/teacher/``: distillation's teacher).
    """
    results = []
    for cfg in evaluators:
        result = await (run_sampling(cfg, target) if isinstance(cfg, SamplingEvaluator)
                        else run_nll(cfg, target))
        if prefix != "eval/":
            result.metrics = {prefix + k.removeprefix("eval/"): v
                              for k, v in result.metrics.items()}
        result.step = step
        results.append(result)
        if run_dir is not None:
            with (run_dir / EVALS_FILE).open("a") as handle:
                handle.write(json.dumps(result.record()) + "\n")
    return results


EVAL_WEIGHTS_PREFIX = "eval-step-"


def eval_weights_name(step: int) -> str:
    """The sampler weights an evaluation of step ``step`` saves (checkpoint retention
    removes them with the step's checkpoint)."""
    return f"{EVAL_WEIGHTS_PREFIX}{step}"


def sampler_for_current_weights(training_client: Any, name: str) -> Any:
    """A sampling client serving exactly the run's current weights.

    Saved as a sampler checkpoint and pinned by path rather than published
    live: a run just loaded from a checkpoint is at step 0, and a live publish
    at version 0 means "the base model".
    """
    saved = training_client.save_weights_for_sampler(name).result()
    return training_client.create_sampling_client(saved.path)
