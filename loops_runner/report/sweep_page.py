"""The page of a sweep (or of several runs): curves overlaid, a sortable table, objectives."""

from __future__ import annotations

import html
import os
from pathlib import Path

from loops_runner.report import charts, page
from loops_runner.report.sources import RunData, SweepData, is_number


def _report_link(run: RunData, base: Path) -> str:
    """The run dir's name, linked to its own report when it has one."""
    label = html.escape(run.run_dir.name)
    report = run.run_dir / page.REPORT_FILE
    if not report.is_file():
        return label
    return f'<a href="{html.escape(os.path.relpath(report, base))}">{label}</a>'


def sweep_table(sweep: SweepData, out_dir: Path) -> page.Table:
    parameters = charts.swept_parameters(sweep)
    metric_names = sorted({key for job in sweep.jobs for key, value in job.final_metrics.items()
                           if is_number(value)})
    if sweep.objective in metric_names:  # the objective first, the rest by name
        metric_names.remove(sweep.objective)
        metric_names.insert(0, sweep.objective)
    rows = []
    for job in sweep.jobs:
        values = job.parameters()
        status = job.status + (" (partial)" if job.partial else "")
        rows.append([job.number, _report_link(job.run, out_dir), status,
                     *(values.get(p) for p in parameters),
                     *(job.final_metrics.get(m) for m in metric_names)])
    return page.Table("Jobs and final metrics (click a column to sort)",
                      ["job", "run dir", "status", *parameters, *metric_names], rows,
                      sortable=True, html_columns=frozenset({1}))


def sweep_page(sweep: SweepData, out_dir: Path) -> page.Page:
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
    built = page.Page(title=title, subtitle=subtitle, notes=notes,
                      tables=[sweep_table(sweep, out_dir)])
    page.add_figures(built, charts.sweep_sections(sweep))
    return built
