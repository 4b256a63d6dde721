"""Build a report: tell a run from a sweep, then write the page and the PNGs."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from loops_runner.report import charts, page, png, run_page, sweep_page
from loops_runner.report.sources import (
    ReportError,
    child_run_dirs,
    is_run_dir,
    load_run,
    load_runs,
    load_sweep,
    no_run_message,
)
from loops_runner.runner.run_files import SWEEP_FILE

PLOTS_DIR = "report_plots"


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
    if len(paths) > 1 and out_dir is None:
        raise ReportError("several run dirs are compared in one report: pass --out DIR "
                          "to say where it goes")
    target = Path(out_dir).expanduser().resolve() if out_dir is not None else paths[0]
    if len(paths) == 1 and is_run_dir(paths[0]):
        kind, built = "run", run_page.run_page(load_run(paths[0]))
    elif len(paths) == 1 and ((paths[0] / SWEEP_FILE).is_file() or child_run_dirs(paths[0])):
        kind, built = "sweep", sweep_page.sweep_page(load_sweep(paths[0]), target)
    elif len(paths) == 1:
        raise ReportError(no_run_message(paths[0]))
    else:
        for path in paths:
            if not is_run_dir(path):
                raise ReportError(no_run_message(path))
        kind, built = "runs", sweep_page.sweep_page(load_runs(paths), target)
    html_path = target / page.REPORT_FILE
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
