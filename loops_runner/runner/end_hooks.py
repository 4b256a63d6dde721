"""What runs when a run or a sweep ends, installed by the application above the runner.

The runner sits below the report in the layers (runner -> report), so it never
imports it: ``loops_runner.__main__`` installs the report writer here when it
is imported (sweep workers of the joblib and Ray launchers import it too).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rich.console import Console

ReportWriter = Callable[[Path, Console], None]
_writers: list[ReportWriter] = []


def install_report_writer(writer: ReportWriter) -> None:
    if writer not in _writers:
        _writers.append(writer)


def write_reports(folder: Path, console: Console) -> None:
    """Write what the installed writers write for ``folder`` (a run dir or a sweep dir)."""
    for writer in _writers:
        writer(folder, console)
