"""Evaluators for every recipe (``evaluators:`` + ``eval_every``) and the ``eval`` recipe.

* :class:`SamplingEvaluator` — prompts from the task registry (held-out split)
  or a user JSONL with a scorer ``score(row, completion) -> float`` by dotted
  path; ``n`` samples per prompt, mean score and pass@k, all requests in flight;
* :class:`NllEvaluator` — mean NLL per trained token on held-out conversations.

Each result carries the sampling settings and the model that produced it
(:class:`EvalResult`), and :func:`run_evaluators` appends it to ``evals.jsonl``.
"""

from loops_runner.eval.evaluators import (
    EvalResult,
    EvalTarget,
    EvaluatorConfig,
    NllEvaluator,
    SamplingEvaluator,
    eval_nll,
    eval_weights_name,
    run_evaluators,
    sampler_for_current_weights,
)

__all__ = [
    "EvalResult",
    "EvalTarget",
    "EvaluatorConfig",
    "NllEvaluator",
    "SamplingEvaluator",
    "eval_nll",
    "eval_weights_name",
    "run_evaluators",
    "sampler_for_current_weights",
]
