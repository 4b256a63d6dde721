"""What changed in a run, printed at its end: the headline metrics before -> after.

Read from ``metrics.jsonl`` (so it holds for any recipe, a user's too): every
``eval/*`` metric at its first logged value (step 0, the base model) against
its last, the train loss of the first step against the last, and the RL
reward averaged over the first steps against the last ones (one step's reward
is noisy).
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from loops_runner.tasks.families import FAMILIES

# Per-step metrics averaged over this many steps at each end.
NOISY_WINDOW = 3
NOISY = ("rollout/reward_mean",)
FIRST_LAST = ("train/loss", "dpo/loss")


def headline_changes(metrics_path: Path) -> list[tuple[str, float, float]]:
    """(metric, before, after) for the run's headline metrics, in a stable order."""
    series: dict[str, list[float]] = {}
    if not metrics_path.is_file():
        return []
    for line in metrics_path.read_text().splitlines():
        if not line.strip():
            continue
        for key, value in json.loads(line).items():
            if isinstance(value, int | float) and not isinstance(value, bool) and (
                    _is_eval(key) or key in FIRST_LAST or key in NOISY):
                series.setdefault(key, []).append(float(value))
    changes = []
    for key in sorted(series, key=lambda k: (not _is_eval(k), k)):
        values = series[key]
        if len(values) < 2:
            continue
        if key in NOISY:
            window = min(NOISY_WINDOW, len(values) // 2)
            before, after = (sum(values[:window]) / window, sum(values[-window:]) / window)
        else:
            before, after = values[0], values[-1]
        changes.append((key, before, after))
    return changes


def _is_eval(key: str) -> bool:
    # Per-family breakdowns (eval/accuracy/<family>) stay in the report: the table is short.
    return key.startswith("eval/") and key.rsplit("/", 1)[-1] not in FAMILIES


def changes_table(changes: list[tuple[str, float, float]]) -> Table:
    table = Table(title="what changed", title_justify="left")
    table.add_column("metric")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for key, before, after in changes:
        label = key
        if key in NOISY:
            label = f"{key} (mean of first / last {NOISY_WINDOW} steps)"
        table.add_row(label, f"{before:.3f}", f"{after:.3f}")
    return table
