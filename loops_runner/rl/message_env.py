"""Message-level envs: write an episode in chat messages, train on tokens.

A :class:`MessageEnv` speaks messages (``{"role", "content"}``): it gives the
opening messages and answers each assistant reply with a reward, whether the
episode is over, and the messages that follow (a user turn, a tool result).
:class:`RenderedEnv` turns it into a token-level :class:`~loops_runner.rl.types.Env`
with the tokenizer's chat template: the observation is the whole conversation
rendered with the generation prompt, the reply is the decoded sampled tokens.

:class:`ProblemEnv` is the single-turn case: a question and a checker.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from loops_runner.data.chat import prompt_tokens
from loops_runner.rl.types import Env, EnvGroupBuilder, Metrics, Observation, StepResult

Message = dict[str, Any]


@dataclass
class MessageStep:
    """What a message env answers to one assistant reply."""

    reward: float
    episode_done: bool
    new_messages: list[Message] = field(default_factory=list)
    metrics: Metrics = field(default_factory=dict)


class MessageEnv(ABC):
    """One episode in messages."""

    @abstractmethod
    def initial_messages(self) -> list[Message]:
        """The conversation before the first reply (system and user turns)."""

    @abstractmethod
    def step_reply(self, reply: str) -> MessageStep:
        """Judge one assistant reply; say what comes next."""


def reply_text(tokenizer: Any, action: Sequence[int]) -> str:
    """The text of a sampled reply, without the end-of-turn token."""
    return str(tokenizer.decode(list(action), skip_special_tokens=True)).strip()


class RenderedEnv(Env):
    """A :class:`MessageEnv` seen through the chat template."""

    def __init__(self, env: MessageEnv, tokenizer: Any) -> None:
        self.env = env
        self.tokenizer = tokenizer
        self.messages: list[Message] = []

    def _render(self) -> Observation:
        return prompt_tokens(self.tokenizer, self.messages)

    def initial_observation(self) -> Observation:
        self.messages = list(self.env.initial_messages())
        return self._render()

    def step(self, action: list[int]) -> StepResult:
        reply = reply_text(self.tokenizer, action)
        self.messages.append({"role": "assistant", "content": reply})
        result = self.env.step_reply(reply)
        self.messages.extend(result.new_messages)
        return StepResult(reward=result.reward, episode_done=result.episode_done,
                          next_observation=[] if result.episode_done else self._render(),
                          metrics=result.metrics)


class ProblemEnv(MessageEnv):
    """A single-turn problem: ``messages`` asked once, the reply scored by ``check``."""

    def __init__(self, messages: list[Message], check: Callable[[str], float]) -> None:
        self.messages = messages
        self.check = check

    def initial_messages(self) -> list[Message]:
        return list(self.messages)

    def step_reply(self, reply: str) -> MessageStep:
        return MessageStep(reward=self.check(reply), episode_done=True)


class MessageEnvGroupBuilder(EnvGroupBuilder):
    """``group_size`` fresh copies of one message env, rendered with ``tokenizer``."""

    def __init__(self, make_env: Callable[[], MessageEnv], tokenizer: Any, *,
                 prompt: str = "", tags: Sequence[str] = ()) -> None:
        self.make_env = make_env
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.tags = list(tags)

    def make_envs(self, group_size: int) -> list[Env]:
        return [RenderedEnv(self.make_env(), self.tokenizer) for _ in range(group_size)]

    def prompt_text(self) -> str:
        return self.prompt

    def logging_tags(self) -> list[str]:
        return self.tags
