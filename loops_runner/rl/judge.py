"""A judge reward: a model the stack can sample grades each reply against a rubric.

``recipe.judge`` names the judge the way distillation names its teacher (a base
model, a run dir, a checkpoint folder or a ``bt://`` URI; see
:mod:`loops_runner.rl.teacher`, whose resolution and provisioning this reuses). The
rubric (``recipe.judge_rubric``) is a template with ``{prompt}`` and ``{completion}``,
rendered as one user turn with the judge's chat template. The reward is the judge's
probability of the positive verdict, read from logprobs rather than parsed from text:

    P(yes) = exp(lp(yes)) / (exp(lp(yes)) + exp(lp(no)))

where ``lp(v)`` is the judge's logprob of the verdict's tokens right after the
rendered rubric (summed when a verdict is several tokens). That is a smooth reward
in [0, 1] even when the judge would rarely say "yes" outright, and a judge that
answers off-format cannot break it.

Every (prompt, completion) of a step is scored at once (two ``compute_logprobs``
requests each, all in flight together, so the judge's own sampler batches them) and
the score is cached per (prompt, completion): a group's identical replies and a
held-out prompt seen again cost nothing. The score is added to each episode's reward
(times ``recipe.judge_weight``) and logged as the env metric ``judge_score``
(``rollout/env/judge_score``), with ``judge_cached`` the share served from the cache.
"""

from __future__ import annotations

import asyncio
import math
import string
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loops_runner.data.chat import prompt_tokens
from loops_runner.rl.rollouts import RolloutBatch
from loops_runner.rl.teacher import ProvisionedSampler, TeacherSource, provision_sampler
from loops_runner.runner.config import ConfigError
from loops_runner.wire import ModelInput

DEFAULT_RUBRIC = ("Here is a question and a reply.\n\nQuestion: {prompt}\n\nReply: "
                  "{completion}\n\nIs the reply correct and helpful? Answer yes or no.")
RUBRIC_FIELDS = frozenset({"prompt", "completion"})


def check_rubric(rubric: str, key: str = "recipe.judge_rubric") -> str:
    """Refuse a rubric that names other fields than {prompt} and {completion}, or no reply."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(rubric) if name is not None}
    except ValueError as error:
        raise ConfigError(f"{key}: not a valid template ({error}); write literal braces "
                          "as {{ and }}") from None
    unknown = fields - RUBRIC_FIELDS
    if unknown:
        raise ConfigError(f"{key}: unknown field(s) {sorted(unknown)}; a rubric may use only "
                          "{prompt} and {completion}")
    if "completion" not in fields:
        raise ConfigError(f"{key}: the rubric must show the reply: put {{completion}} in it")
    return rubric


def verdict_probability(positive_lp: float, negative_lp: float) -> float:
    """P(positive) between the two verdicts, computed without overflow."""
    return 1.0 / (1.0 + math.exp(min(negative_lp - positive_lp, 700.0)))


@dataclass(frozen=True)
class JudgeSettings:
    source: TeacherSource
    rubric: str
    positive: str
    negative: str
    weight: float


class Judge:
    """Scores (prompt, completion) pairs with a judge sampler; cached, batched per call."""

    def __init__(self, sampler: Any, settings: JudgeSettings) -> None:
        self.sampler = sampler
        self.settings = settings
        self.tokenizer = sampler.get_tokenizer()
        self.verdict_tokens = [self._encode(settings.positive, "recipe.judge_positive"),
                               self._encode(settings.negative, "recipe.judge_negative")]
        if self.verdict_tokens[0] == self.verdict_tokens[1]:
            raise ConfigError("recipe.judge_positive and recipe.judge_negative encode to the "
                              "same tokens: the judge could not tell them apart")
        self._cache: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()  # off-policy sampling scores from its own thread

    def _encode(self, verdict: str, key: str) -> list[int]:
        tokens = list(self.tokenizer.encode(verdict, add_special_tokens=False))
        if not tokens:
            raise ConfigError(f"{key}: {verdict!r} encodes to no tokens")
        return tokens

    def rubric_tokens(self, prompt: str, completion: str) -> list[int]:
        text = self.settings.rubric.format(prompt=prompt, completion=completion)
        return prompt_tokens(self.tokenizer, [{"role": "user", "content": text}])

    async def _verdict_lp(self, context: list[int], verdict: list[int]) -> float:
        logprobs = await self.sampler.compute_logprobs_async(
            ModelInput.from_ints(context + verdict))
        return float(sum(logprobs[len(context):]))

    async def _score_new(self, prompt: str, completion: str) -> float:
        context = self.rubric_tokens(prompt, completion)
        positive, negative = await asyncio.gather(
            *(self._verdict_lp(context, tokens) for tokens in self.verdict_tokens))
        return verdict_probability(positive, negative)

    async def _score_all(self, pairs: list[tuple[str, str]]
                         ) -> list[tuple[float | BaseException, bool]]:
        """(score or the error that stopped it, from the cache) per pair; the uncached
        distinct pairs all in flight at once. Only scores are cached."""
        with self._lock:
            known = {pair: self._cache[pair] for pair in set(pairs) if pair in self._cache}
        new = [pair for pair in dict.fromkeys(pairs) if pair not in known]
        results = await asyncio.gather(*(self._score_new(*pair) for pair in new),
                                       return_exceptions=True)
        fresh = dict(zip(new, results, strict=True))
        with self._lock:
            self._cache.update({pair: value for pair, value in fresh.items()
                                if isinstance(value, float)})
        return [(known[pair], True) if pair in known else (fresh[pair], False)
                for pair in pairs]

    async def score(self, pairs: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        """(score, from the cache) per pair; raises the first error a request hit."""
        scores: list[tuple[float, bool]] = []
        for value, cached in await self._score_all(pairs):
            if isinstance(value, BaseException):
                raise value
            scores.append((value, cached))
        return scores

    async def reward_batch(self, batch: RolloutBatch) -> None:
        """Add ``weight`` × the judge's score to every finished episode of ``batch``.

        A failed judge request (a sampler error, a rubric too long for the judge's
        context) fails the episodes it was for, counted in ``rollout/errors`` with the
        reason, like a failing reward function; the others are scored.
        """
        episodes = [(group.prompt, completion, trajectory)
                    for group in batch.groups
                    for trajectory, completion in zip(group.trajectories_G, group.completions_G,
                                                      strict=True)
                    if not trajectory.failed and trajectory.transitions]
        if not episodes:
            return
        scored = await self._score_all(
            [(prompt, completion) for prompt, completion, _ in episodes])
        for (_, _, trajectory), (score, cached) in zip(episodes, scored, strict=True):
            if isinstance(score, BaseException):
                trajectory.error = f"judge: {type(score).__name__}: {score}"
                continue
            trajectory.group_reward += self.settings.weight * score
            trajectory.transitions[-1].metrics.update(
                {"judge_score": score, "judge_cached": float(cached)})


@dataclass
class RunningJudge:
    """A judge provisioned for one run; ``stop`` ends its sampler (call it in a finally)."""

    judge: Judge
    provisioned: ProvisionedSampler

    def stop(self) -> list[Any]:
        return self.provisioned.stop()


def start_judge(service: Any, settings: JudgeSettings | None, timeouts: Any,
                say: Callable[[str], None] = print) -> RunningJudge | None:
    """Provision the judge's own sampler (before the first step) and check its verdicts;
    None without a judge."""
    if settings is None:
        return None
    provisioned = provision_sampler(service, settings.source, timeouts, name="judge")
    try:
        running = RunningJudge(Judge(provisioned.sampler, settings), provisioned)
    except BaseException:
        provisioned.stop()
        raise
    say(f"Judge: {settings.source.described} ({settings.source.kind}), P({settings.positive!r}) "
        f"vs P({settings.negative!r}), weight {settings.weight}")
    return running


def no_reward(prompt: str, completion: str, **row: Any) -> float:
    """The reward of prompts scored by the judge alone (the judge adds its score later)."""
    return 0.0
