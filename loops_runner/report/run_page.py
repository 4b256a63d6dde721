"""The page of one run: its curves, its record as tables, its samples, rollouts and
most divergent tokens."""

from __future__ import annotations

import json
import time
from typing import Any

from loops_runner.report import charts, page
from loops_runner.report.sources import (
    DIVERGENCE_FILE,
    ROLLOUTS_FILE,
    DivergentStep,
    RolloutGroup,
    RunData,
    is_number,
)

# Rollouts (divergent tokens) beyond this much JSON are thinned to evenly spaced steps
# (the file keeps all).
ROLLOUTS_BUDGET_BYTES = 1_500_000
DIVERGENCE_BUDGET_BYTES = 500_000
MAX_TEXT_CHARS = 4000  # per prompt or completion shown in the browser


def _when(timestamp: Any) -> str | None:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp)) \
        if is_number(timestamp) else None


def _flatten(value: Any, prefix: str = "") -> list[list[Any]]:
    if isinstance(value, dict) and value:
        rows = []
        for key, item in value.items():
            rows.extend(_flatten(item, f"{prefix}{key}."))
        return rows
    return [[prefix.rstrip("."), value]]


def run_tables(run: RunData) -> list[page.Table]:
    record = run.record or {}
    started, finished = record.get("started_at"), record.get("finished_at")
    duration = round(finished - started, 1) if is_number(started) and is_number(finished) \
        else None
    last_step = next((row["step"] for row in reversed(run.metrics) if "step" in row), None)
    overview = [
        ["run dir", str(run.run_dir)], ["run name", record.get("run_name")],
        ["status", run.status], ["recipe", record.get("recipe")],
        ["backend", record.get("backend")], ["base model", record.get("base_model")],
        ["seed", record.get("seed")], ["run id", record.get("run_id")],
        ["run ids (all attempts)", ", ".join(record.get("run_ids") or []) or None],
        ["session id", record.get("session_id")], ["W&B id", record.get("wandb_id")],
        ["config hash", record.get("config_hash")], ["git sha", record.get("git_sha")],
        ["attempts", record.get("attempts")], ["started", _when(started)],
        ["finished", _when(finished)], ["duration (s)", duration],
        ["last logged step", last_step], ["error", record.get("error")],
    ]
    tables = [page.Table("Run", ["field", "value"], [r for r in overview if r[1] is not None])]
    final, partial = run.final_metrics()
    tables.append(page.Table("Final metrics" + (" (last logged values)" if partial else ""),
                             ["metric", "value"], sorted([k, v] for k, v in final.items()),
                             sortable=True))
    tables.append(page.Table("Checkpoints", ["step", "path", "saved"],
                             [[c.get("step"), c.get("path"), _when(c.get("saved_at"))]
                              for c in record.get("checkpoints") or [] if isinstance(c, dict)]))
    versions = record.get("package_versions") or {}
    tables.append(page.Table("Versions", ["package", "version"], sorted(
        [k, v] for k, v in versions.items())))
    if run.config is not None:
        tables.append(page.Table("Config (config.resolved.yaml)", ["key", "value"],
                                 _flatten(run.config), scroll=True))
    if run.samples:
        columns = list(dict.fromkeys(key for row in run.samples for key in row))
        tables.append(page.Table("Final samples", columns,
                                 [[row.get(c) for c in columns] for row in run.samples]))
    return tables


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS] + " …[clipped]"


def _group_json(group: RolloutGroup) -> dict[str, Any]:
    return {"group": group.group, "policy_version": group.policy_version,
            "prompt": _clip(group.prompt), "completions": [_clip(c) for c in group.completions],
            "rewards": group.rewards, "advantages": group.advantages}


def _thinned(steps: list[dict[str, Any]], budget: int,
             source: str) -> tuple[dict[str, Any], str | None]:
    """``{"steps": ...}`` within ``budget`` bytes of JSON, and a note when steps were left out."""
    sizes = [len(json.dumps(entry)) for entry in steps]
    if sum(sizes) <= budget:
        return {"steps": steps}, None
    # Keep evenly spaced steps, always the first and the last, within the budget.
    keep = max(2, int(budget * len(steps) / sum(sizes)))
    indices = sorted({round(i * (len(steps) - 1) / (keep - 1)) for i in range(keep)})
    kept = [steps[i] for i in indices]
    return {"steps": kept}, (f"showing {len(kept)} of {len(steps)} steps (evenly spaced, "
                             f"to keep this page small); {source} has them all")


def rollouts_payload(groups: list[RolloutGroup]) -> tuple[dict[str, Any], str | None]:
    """Rollout groups by step for the browser, thinned to a size budget."""
    by_step: dict[int, list[dict[str, Any]]] = {}
    for group in sorted(groups, key=lambda g: (g.step, g.group)):
        by_step.setdefault(group.step, []).append(_group_json(group))
    steps = [{"step": step, "groups": items} for step, items in sorted(by_step.items())]
    return _thinned(steps, ROLLOUTS_BUDGET_BYTES, ROLLOUTS_FILE)


def divergence_payload(lines: list[DivergentStep]) -> tuple[dict[str, Any], str | None]:
    """Each step's most divergent tokens for the browser, thinned to a size budget."""
    steps = [{"step": line.step, "tokens": line.tokens}
             for line in sorted(lines, key=lambda line: line.step)]
    return _thinned(steps, DIVERGENCE_BUDGET_BYTES, DIVERGENCE_FILE)


def run_page(run: RunData) -> page.Page:
    record = run.record or {}
    title = f"Run {record.get('run_name') or run.run_dir.name}"
    subtitle = " · ".join(str(part) for part in (record.get("recipe"), run.status,
                                                 record.get("base_model")) if part)
    built = page.Page(title=title, subtitle=subtitle, notes=list(run.notes),
                      tables=run_tables(run))
    page.add_figures(built, charts.run_sections(run))
    if run.rollouts:
        built.rollouts, built.rollouts_note = rollouts_payload(run.rollouts)
    if run.divergence:
        built.divergence, built.divergence_note = divergence_payload(run.divergence)
    return built
