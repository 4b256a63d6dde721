"""sweep.jsonl under concurrent writers, its reading, and what a job hands across processes."""

from __future__ import annotations

import json
import multiprocessing
import pickle
from pathlib import Path

import pytest

from loops_runner.runner.config import ConfigError
from loops_runner.runner.run_dirs import CLAIM_FILE, claim_run_dir
from loops_runner.runner.sweep import (
    SweepJobError,
    append_sweep_line,
    latest_per_job,
    portable_error,
    read_sweep_lines,
)

WRITERS, LINES_EACH = 4, 25


def _line(job: int, attempt: int, status: str = "completed") -> dict:
    # Over io.DEFAULT_BUFFER_SIZE (8 KiB): a buffered file writes it in pieces that interleave.
    metrics = {f"eval/metric_{i}": float(job * 1000 + attempt) for i in range(600)}
    return {"job": job, "overrides": [f"seed={job}"], "status": status,
            "run_dir": f"/sweep/job-{job}-attempt-{attempt}", "final_metrics": metrics,
            "error": None, "finished_at": 0.0}


def _write_lines(sweep_file: str, job: int) -> None:
    for attempt in range(LINES_EACH):
        append_sweep_line(Path(sweep_file), _line(job, attempt))


def test_concurrent_writers_leave_only_complete_lines(tmp_path: Path) -> None:
    sweep_file = tmp_path / "sweep.jsonl"
    context = multiprocessing.get_context("fork")  # no re-import per writer: fast
    writers = [context.Process(target=_write_lines, args=(str(sweep_file), job))
               for job in range(WRITERS)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
        assert writer.exitcode == 0
    raw_lines = sweep_file.read_text().splitlines()
    assert len(raw_lines) == WRITERS * LINES_EACH
    rows = [json.loads(line) for line in raw_lines]  # each one parses on its own
    assert len(rows[0]["final_metrics"]) == 600 and len(raw_lines[0]) > 8192
    for job in range(WRITERS):
        attempts = [row["run_dir"] for row in rows if row["job"] == job]
        assert attempts == [f"/sweep/job-{job}-attempt-{a}" for a in range(LINES_EACH)]


def test_a_skipped_completed_job_is_not_logged_twice_but_a_new_outcome_is(
        tmp_path: Path) -> None:
    sweep_file = tmp_path / "sweep.jsonl"
    assert append_sweep_line(sweep_file, _line(0, 0, status="failed"))
    assert append_sweep_line(sweep_file, _line(0, 0))  # resumed and completed: a new outcome
    assert not append_sweep_line(sweep_file, _line(0, 0))  # the same result, re-reported
    other_job = {**_line(0, 0), "job": 1}  # same run dir (same overrides), another job
    assert append_sweep_line(sweep_file, other_job)
    assert [(row["job"], row["status"]) for row in read_sweep_lines(sweep_file)] == \
        [(0, "failed"), (0, "completed"), (1, "completed")]


def test_a_torn_last_line_is_skipped_and_does_not_swallow_the_next(tmp_path: Path) -> None:
    sweep_file = tmp_path / "sweep.jsonl"
    append_sweep_line(sweep_file, _line(0, 0))
    with sweep_file.open("a") as handle:  # a kill in the middle of a write
        handle.write(json.dumps(_line(1, 0))[:100])
    append_sweep_line(sweep_file, _line(2, 0))
    assert [row["job"] for row in read_sweep_lines(sweep_file)] == [0, 2]


def test_summary_rows_are_the_latest_outcome_of_each_job_in_job_order() -> None:
    rows = [{"job": 2, "run_dir": "c", "status": "completed"},
            {"job": 1, "run_dir": "b", "status": "failed"},
            {"job": 0, "run_dir": "a", "status": "completed"},
            {"job": 1, "run_dir": "b", "status": "completed"},
            {"job": 3, "run_dir": "a", "status": "completed"}]  # same overrides as job 0
    assert [(r["job"], r["status"]) for r in latest_per_job(rows)] == \
        [(0, "completed"), (1, "completed"), (2, "completed"), (3, "completed")]


class _NeedsTwoArguments(Exception):
    def __init__(self, code: int, where: str) -> None:
        super().__init__(f"code {code} at {where}")


def test_an_error_that_cannot_cross_processes_is_sent_as_text() -> None:
    plain = ValueError("bad value")
    assert portable_error(plain) is plain
    odd = _NeedsTwoArguments(7, "step 3")
    with pytest.raises(TypeError):  # what would abort a joblib or Ray sweep
        pickle.loads(pickle.dumps(odd))
    portable = portable_error(odd)
    assert isinstance(portable, SweepJobError)
    assert str(pickle.loads(pickle.dumps(portable))) == "_NeedsTwoArguments: code 7 at step 3"


def test_a_run_dir_in_use_is_refused_and_free_again_afterwards(tmp_path: Path) -> None:
    with claim_run_dir(tmp_path):
        assert (tmp_path / CLAIM_FILE).is_file()
        with pytest.raises(ConfigError, match="in use by another process"), \
                claim_run_dir(tmp_path):
            pass
    with claim_run_dir(tmp_path):
        pass
