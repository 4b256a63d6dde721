"""Arithmetic with a calculator tool: a tool-use env.

The model may call ``calculator(expression)`` (``+ - * / ( )`` on numbers) any
number of times up to a limit, then answers; reward 1 for the right number.
``recipe.env=loops_runner.rl.envs.calculator:make_dataset``.
"""

from __future__ import annotations

import ast
import operator
import random
from typing import Any

from loops_runner.rl.datasets import BuilderListDataset, DatasetSetup
from loops_runner.rl.message_env import MessageEnvGroupBuilder
from loops_runner.rl.tools import ToolEnv
from loops_runner.tasks.scoring import normalise

_OPERATORS: dict[type, Any] = {ast.Add: operator.add, ast.Sub: operator.sub,
                               ast.Mult: operator.mul, ast.Div: operator.truediv,
                               ast.USub: operator.neg}
MAX_EXPRESSION = 200


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.operand))
    raise ValueError("only numbers, + - * / and parentheses are allowed")


def calculator(expression: str) -> str:
    """evaluates an arithmetic expression, e.g. {"expression": "12 * (3 + 4)"}"""
    if len(expression) > MAX_EXPRESSION:
        raise ValueError(f"expression longer than {MAX_EXPRESSION} characters")
    value = _evaluate(ast.parse(expression, mode="eval").body)
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


class CalculatorEnv(ToolEnv):
    def __init__(self, question: str, answer: int, max_tool_calls: int) -> None:
        super().__init__({"calculator": calculator}, max_tool_calls)
        self._question, self.answer = question, answer

    def question(self) -> str:
        return self._question

    def final_reward(self, answer: str) -> float:
        text = normalise(answer)
        return 1.0 if text.lstrip("-").isdigit() and int(text) == self.answer else 0.0


def make_dataset(setup: DatasetSetup, high: int = 99, max_tool_calls: int = 2,
                 num_problems: int = 500) -> BuilderListDataset:
    rng = random.Random(f"calculator-{setup.seed}")
    builders = []
    for _ in range(num_problems):
        a, b, c = rng.randint(2, high), rng.randint(2, high), rng.randint(1, high)
        question, answer = f"What is {a} * {b} + {c}?", a * b + c
        builders.append(MessageEnvGroupBuilder(
            lambda q=question, x=answer: CalculatorEnv(q, x, max_tool_calls), setup.tokenizer,
            prompt=question, tags=["calculator"]))
    return BuilderListDataset(builders, setup.groups_per_batch, setup.seed)
