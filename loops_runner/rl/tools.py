"""Tool calls in message envs: the model writes a call, the env runs a Python function.

A call is written the way Hermes/Qwen-style chat templates write it, inside the
assistant reply::

    <tool_call>{"name": "calculator", "arguments": {"expression": "3 * 7"}}</tool_call>

:class:`ToolEnv` runs the named function with the arguments and answers with a
``{"role": "tool", "content": result}`` message; a reply without a call is the
final answer, scored by :meth:`ToolEnv.final_reward`. Malformed calls, unknown
tools and tools that raise are answered with an error message the model can read
(the episode goes on; only a broken env fails an episode).
"""

from __future__ import annotations

import json
import re
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loops_runner.rl.message_env import Message, MessageEnv, MessageStep

TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]


def parse_tool_call(reply: str) -> ToolCall | str | None:
    """The first tool call in ``reply``; an error string when it is malformed; None if none."""
    found = TOOL_CALL.search(reply)
    if found is None:
        return None
    try:
        payload = json.loads(found.group(1))
    except json.JSONDecodeError as error:
        return f"tool call is not valid JSON ({error.msg})"
    if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
        return "tool call needs a string 'name'"
    arguments = payload.get("arguments", {})
    if not isinstance(arguments, dict):
        return "tool call 'arguments' must be an object"
    return ToolCall(payload["name"], arguments)


def tool_instructions(tools: dict[str, Callable[..., Any]]) -> str:
    described = "; ".join(f"{name}: {(fn.__doc__ or '').strip().splitlines()[0]}"
                          for name, fn in tools.items())
    return ("You can call a tool by writing <tool_call>{\"name\": ..., \"arguments\": {...}}"
            f"</tool_call>. Tools: {described}. Give the final answer without a tool call.")


class ToolEnv(MessageEnv):
    """A multi-turn episode with tools; subclasses give the question and the final reward."""

    def __init__(self, tools: dict[str, Callable[..., Any]], max_tool_calls: int = 3) -> None:
        self.tools = tools
        self.max_tool_calls = max_tool_calls
        self.tool_calls = 0

    @abstractmethod
    def question(self) -> str:
        """The user's question."""

    @abstractmethod
    def final_reward(self, answer: str) -> float:
        """The reward of the final answer."""

    def initial_messages(self) -> list[Message]:
        return [{"role": "system", "content": tool_instructions(self.tools)},
                {"role": "user", "content": self.question()}]

    def run_tool(self, call: ToolCall) -> str:
        function = self.tools.get(call.name)
        if function is None:
            return f"error: unknown tool {call.name!r}; tools: {', '.join(self.tools)}"
        try:
            return str(function(**call.arguments))
        except Exception as error:  # the model reads the error and may try again
            return f"error: {type(error).__name__}: {error}"

    def step_reply(self, reply: str) -> MessageStep:
        call = parse_tool_call(reply)
        if call is None:
            return MessageStep(self.final_reward(reply), True,
                               metrics={"tool_calls": float(self.tool_calls)})
        self.tool_calls += 1
        if self.tool_calls > self.max_tool_calls:
            return MessageStep(0.0, True, metrics={"tool_calls": float(self.tool_calls)})
        result = f"error: {call}" if isinstance(call, str) else self.run_tool(call)
        return MessageStep(0.0, False, [{"role": "tool", "content": result}])
