"""Build a report: decide what the paths are, lay out the page, write HTML and PNGs."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loops_runner.report import charts, page, png
from loops_runner.report.sources import (
    ROLLOUTS_FILE,
    ReportError,
    RolloutGroup,
    RunData,
    SweepData,
    child_run_dirs,
    is_number,
    is_run_dir,
    load_run,
    load_runs,
    load_sweep,
    no_run_message,
)
from loops_runner.runner.sweep import SWEEP_FILE

REPORT_FILE = "report.html"
PLOTS_DIR = "report_plots"
# Rollouts beyond this much JSON are thinned to evenly spaced steps (the file keeps all).
ROLLOUTS_BUDGET_BYTES = 1_500_000
MAX_TEXT_CHARS = 4000  # per prompt or completion shown in the browser


@dataclass
class ReportResult:
    kind: str  # run | sweep | runs
    html: Path
    pngs: list[Path]
    seconds: float

    @property
    def size_bytes(self) -> int:
        return self.html.stat().st_size


def write_report(paths: list[Path], out_dir: Path | None = None, *,
                 pngs: bool = True) -> ReportResult:
    """Write ``report.html`` (and PNGs in ``report_plots/``) for a run, a sweep or several runs.

    One run dir or sweep dir: the report goes into it unless ``out_dir`` says
    otherwise. Several run dirs: ``out_dir`` is required.
    """
    started = time.monotonic()
    paths = [Path(p).expanduser().resolve() for p in paths]
    if not paths:
        raise ReportError("no directory given: pass a run dir, a sweep dir or several run dirs")
    if len(paths) == 1 and is_run_dir(paths[0]):
        kind, built = "run", run_page(load_run(paths[0]))
    elif len(paths) == 1 and ((paths[0] / SWEEP_FILE).is_file() or child_run_dirs(paths[0])):
        kind, built = "sweep", sweep_page(load_sweep(paths[0]))
    elif len(paths) == 1:
        raise ReportError(no_run_message(paths[0]))
    else:
        if out_dir is None:
            raise ReportError("several run dirs are compared in one report: pass --out DIR "
                              "to say where it goes")
        for path in paths:
            if not is_run_dir(path):
                raise ReportError(no_run_message(path))
        kind, built = "runs", sweep_page(load_runs(paths))
    target = Path(out_dir).expanduser().resolve() if out_dir is not None else paths[0]
    html_path = target / REPORT_FILE
    _refuse_foreign_file(html_path)
    target.mkdir(parents=True, exist_ok=True)
    written = _write_pngs(built.sections, target / PLOTS_DIR) if pngs else []
    _atomic_write_text(html_path, page.render(built))
    return ReportResult(kind, html_path, written, time.monotonic() - started)


def _refuse_foreign_file(path: Path) -> None:
    """Replace only a report this tool wrote, never a user's own ``report.html``."""
    if not path.is_file():
        return
    with path.open(encoding="utf-8", errors="replace") as handle:
        head = handle.read(2048)
    if f'content="{page.GENERATOR}"' not in head:
        raise ReportError(f"{path} exists and was not written by {page.GENERATOR}; "
                          "move it away or pass --out DIR")


def _atomic_write_text(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def _write_pngs(sections: list[charts.Section], directory: Path) -> list[Path]:
    directory.mkdir(exist_ok=True)
    written = []
    for section in sections:
        for chart in section.charts:
            path = directory / f"{chart.slug}.png"
            png.write_png(chart, path)
            written.append(path)
    # PNGs of metrics a previous report had but this one has not (this folder is ours).
    for stale in set(directory.glob("*.png")) - set(written):
        stale.unlink()
    return written


def _with_figures(built: page.Page, sections: list[charts.Section]) -> None:
    from loops_runner.report.plotly_figures import figure_json

    used: set[str] = set()
    for section in sections:
        for chart in section.charts:
            base, number = chart.slug, 2
            while chart.slug in used:
                chart.slug, number = f"{base}-{number}", number + 1
            used.add(chart.slug)
            built.figures[f"plot-{chart.slug}"] = figure_json(chart)
    built.sections = sections


# -- a run ------------------------------------------------------------------------


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


def rollouts_payload(groups: list[RolloutGroup]) -> tuple[dict[str, Any], str | None]:
    """Rollout groups by step for the browser, thinned to a size budget."""
    by_step: dict[int, list[dict[str, Any]]] = {}
    for group in sorted(groups, key=lambda g: (g.step, g.group)):
        by_step.setdefault(group.step, []).append(_group_json(group))
    steps = [{"step": step, "groups": items} for step, items in sorted(by_step.items())]
    sizes = [len(json.dumps(entry)) for entry in steps]
    if sum(sizes) <= ROLLOUTS_BUDGET_BYTES:
        return {"steps": steps}, None
    # Keep evenly spaced steps, always the first and the last, within the budget.
    keep = len(steps)
    while keep > 2 and sum(sizes) * keep / len(steps) > ROLLOUTS_BUDGET_BYTES:
        keep -= 1
    indices = sorted({round(i * (len(steps) - 1) / (keep - 1)) for i in range(keep)}) \
        if keep > 1 else [len(steps) - 1]
    kept = [steps[i] for i in indices]
    return {"steps": kept}, (f"showing {len(kept)} of {len(steps)} steps (evenly spaced, "
                             f"to keep this page small); {ROLLOUTS_FILE} has them all")


def run_page(run: RunData) -> page.Page:
    record = run.record or {}
    title = f"Run {record.get('run_name') or run.run_dir.name}"
    subtitle = " · ".join(str(part) for part in (record.get("recipe"), run.status,
                                                 record.get("base_model")) if part)
    built = page.Page(title=title, subtitle=subtitle, notes=list(run.notes),
                      tables=run_tables(run))
    _with_figures(built, charts.run_sections(run))
    if run.rollouts:
        built.rollouts, built.rollouts_note = rollouts_payload(run.rollouts)
    return built


# -- a sweep, or several runs -----------------------------------------------------


def _report_link(run: RunData, base: Path | None) -> str:
    import html

    label = html.escape(run.run_dir.name)
    report = run.run_dir / REPORT_FILE
    if base is None or not report.is_file():
        return label
    return f'<a href="{html.escape(os.path.relpath(report, base))}">{label}</a>'


def sweep_table(sweep: SweepData) -> page.Table:
    parameters = charts.swept_parameters(sweep)
    metric_names = sorted({key for job in sweep.jobs for key, value in job.final_metrics.items()
                           if is_number(value)})
    if sweep.objective in metric_names:  # the objective first, the rest by name
        metric_names.remove(sweep.objective)
        metric_names.insert(0, sweep.objective)
    base = sweep.sweep_dir
    rows = []
    for job in sweep.jobs:
        values = job.parameters()
        status = job.status + (" (partial)" if job.partial else "")
        rows.append([job.number, _report_link(job.run, base), status,
                     *(values.get(p) for p in parameters),
                     *(job.final_metrics.get(m) for m in metric_names)])
    return page.Table("Jobs and final metrics (click a column to sort)",
                      ["job", "run dir", "status", *parameters, *metric_names], rows,
                      sortable=True, html_columns=frozenset({1}))


def sweep_page(sweep: SweepData) -> page.Page:
    if sweep.sweep_dir is not None:
        title, where = f"Sweep {sweep.sweep_dir.name}", str(sweep.sweep_dir)
    else:
        title, where = f"{len(sweep.jobs)} runs compared", ", ".join(
            str(job.run.run_dir) for job in sweep.jobs)
    finished = sum(job.status == "completed" for job in sweep.jobs)
    subtitle = f"{len(sweep.jobs)} job(s), {finished} completed · objective " \
               f"{sweep.objective or '(none)'} · {where}"
    notes = list(sweep.notes)
    for job in sweep.jobs:
        notes.extend(f"{job.run.run_dir.name}: {note}" for note in job.run.notes)
    built = page.Page(title=title, subtitle=subtitle, notes=notes, tables=[sweep_table(sweep)])
    _with_figures(built, charts.sweep_sections(sweep))
    return built
