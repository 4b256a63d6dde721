"""Single-turn verifiable problems from the task registry.

``recipe.env=loops_runner.rl.envs.tasks:make_dataset`` with ``recipe.env_args``:
``families``, ``difficulties``, ``num_problems``. The default mix (larger, capitals,
count_letters, reverse at difficulties 1-2) is where the pretrained ``tiny`` is
sometimes right and sometimes wrong, so groups have mixed rewards to learn from;
``families=[addition, subtraction]`` gives pure arithmetic.
The reward is the registry's own checker (1 for a right answer, else 0), so
"accuracy" means the same here as in SFT data and evals.
"""

from __future__ import annotations

from collections.abc import Sequence

from loops_runner import tasks
from loops_runner.rl.datasets import BuilderListDataset, DatasetSetup
from loops_runner.rl.message_env import MessageEnvGroupBuilder, ProblemEnv
from loops_runner.tasks import Row

DEFAULT_TASK_FAMILIES = ("larger", "capitals", "count_letters", "reverse")


class _TaskCheck:
    def __init__(self, row: Row) -> None:
        self.row = row

    def __call__(self, reply: str) -> float:
        return tasks.score(self.row, reply)


def task_builder(row: Row, tokenizer: object) -> MessageEnvGroupBuilder:
    messages = tasks.as_messages(row)
    check = _TaskCheck(row)
    return MessageEnvGroupBuilder(lambda: ProblemEnv(messages, check), tokenizer,
                                  prompt=row["prompt"], tags=[row["family"]])


def make_dataset(setup: DatasetSetup, families: Sequence[str] = DEFAULT_TASK_FAMILIES,
                 difficulties: Sequence[int] = (1, 2), num_problems: int = 2000,
                 split: tasks.Split = "train") -> BuilderListDataset:
    rows = tasks.sample_rows(num_problems, split=split, families=list(families),
                             difficulties=list(difficulties), seed=setup.seed)
    return BuilderListDataset([task_builder(row, setup.tokenizer) for row in rows],
                              setup.groups_per_batch, setup.seed)
