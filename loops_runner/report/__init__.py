"""Reports: a self-contained ``report.html`` (plotly) plus PNGs (matplotlib) of a run or sweep.

Importing this package is cheap: plotly and matplotlib load only when a report
is built. ``write_report_quietly`` is what runs and sweeps call at their end; a
report that cannot be written never fails the training it reports on.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from loops_runner.report.sources import ReportError

if TYPE_CHECKING:
    from loops_runner.report.build import ReportResult

__all__ = ["ReportError", "write_report", "write_report_quietly"]


def write_report(paths: list[Path], out_dir: Path | None = None, *,
                 pngs: bool = True) -> ReportResult:
    from loops_runner.report.build import write_report as build

    return build(paths, out_dir, pngs=pngs)


def write_report_quietly(path: Path, console: Any) -> ReportResult | None:
    """Write the report of one run or sweep dir; on any failure print why and go on."""
    try:
        result = write_report([path])
    except Exception as error:
        console.print(f"[yellow]No report written for {path}: {type(error).__name__}: "
                      f"{error}[/yellow]")
        return None
    console.print(f"Report: {result.html} (+{len(result.pngs)} PNGs, {result.seconds:.1f} s)")
    return result
