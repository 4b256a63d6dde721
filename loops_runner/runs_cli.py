"""``loops-runner runs list|show|stop``: your runs and samplers on any backend.

The local backend's daemon (the data home's control plane) or a remote one
such as Baseten's (``--base-url https://api.baseten.co``, key in
``$BASETEN_API_KEY``), through the control plane's routes: a run's status,
base model, age and checkpoints; stop one run (its trainer stops with its
last run, its paired sampler with the trainer), or every run and standalone
sampler of a session.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from typing import Any

from loops_runner.checkpoint_cli import run_id_of
from loops_runner.home import loops_home


def add_commands(commands: Any, add_backend: Any) -> None:
    runs = commands.add_parser("runs", help="list, show or stop your runs and samplers")
    actions = runs.add_subparsers(dest="runs_command", required=True)
    listing = actions.add_parser("list", help="runs and samplers still running (--all: every one)")
    listing.add_argument("--session", default=None, help="only this session's")
    listing.add_argument("--all", action="store_true", help="also stopped and failed ones")
    add_backend(listing)
    show = actions.add_parser("show", help="one run: status, trainer, sampler, checkpoints")
    show.add_argument("run", help="run id, or a run dir (its run.json names the run)")
    add_backend(show)
    stop = actions.add_parser("stop", help="stop one run, or everything of a session")
    stop.add_argument("run", nargs="?", default=None,
                      help="run id, or a run dir (its latest run)")
    stop.add_argument("--session", default=None,
                      help="stop every run and standalone sampler of this session instead")
    add_backend(stop)


def _control_plane(args: argparse.Namespace) -> Any:
    from loops_runner.sdk.control_plane import ControlPlaneClient

    if args.base_url:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise SystemExit(f"loops-runner: --base-url needs an API key in ${args.api_key_env}")
        return ControlPlaneClient(args.base_url, api_key)
    from loops_runner.runner.local_daemon import ensure_control_plane

    daemon = ensure_control_plane(loops_home(args.home), 1800.0)
    return ControlPlaneClient(daemon.url, daemon.api_key)


def _age(created: datetime | None) -> str:
    if created is None:
        return "-"
    seconds = (datetime.now(UTC) - created.astimezone(UTC)).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{max(seconds, 0):.0f}s"


def _console() -> Any:
    from rich.console import Console

    # Piped output (scripts, grep) gets whole ids, not a table cut to 80 columns.
    return Console(width=None if sys.stdout.isatty() else 240)


def runs_list(args: argparse.Namespace) -> int:
    from rich.table import Table

    from loops_runner.runner.hosted_runs import is_live

    control_plane = _control_plane(args)
    runs = [run for run in control_plane.list_runs(args.session)
            if args.all or is_live(run.status)]
    samplers = [sampler for sampler in control_plane.list_samplers(args.session)
                if sampler.run_id is None and (args.all or is_live(sampler.status))]
    runs_table = Table(title=f"runs on {control_plane.base_url}")
    for column in ("run", "status", "base model", "age", "checkpoints", "session", "name"):
        runs_table.add_column(column, overflow="fold")
    for run in sorted(runs, key=lambda r: str(r.created_at)):
        count = len(control_plane.list_checkpoints(run.id))
        runs_table.add_row(run.id, run.status or "-", run.base_model, _age(run.created_at),
                           str(count), run.session_id or "-", run.name or "-")
    samplers_table = Table(title="standalone samplers")
    for column in ("sampler", "status", "base model / checkpoint", "age", "session"):
        samplers_table.add_column(column, overflow="fold")
    for sampler in sorted(samplers, key=lambda s: str(s.created_at)):
        samplers_table.add_row(sampler.id, sampler.status or "-",
                               sampler.model_path or sampler.base_model or "-",
                               _age(sampler.created_at), sampler.session_id or "-")
    console = _console()
    console.print(runs_table)
    console.print(samplers_table)
    if not args.all:
        console.print("(running ones only; --all lists stopped and failed ones too)")
    return 0


def runs_show(args: argparse.Namespace) -> int:
    from rich.table import Table

    control_plane = _control_plane(args)
    run = control_plane.get_run(run_id_of(args.run))
    table = Table(title=f"run {run.id}", show_header=False)
    for key, value in (("status", run.status), ("reason", run.reason),
                       ("base model", run.base_model), ("LoRA rank", run.lora_rank),
                       ("name", run.name), ("session", run.session_id),
                       ("age", _age(run.created_at)), ("replicas", run.replicas),
                       ("trainer deployment", run.deployment_id), ("trainer URL", run.base_url),
                       ("paired sampler", run.sampler.id if run.sampler else None)):
        table.add_row(key, "-" if value is None else str(value))
    for checkpoint in control_plane.list_checkpoints(run.id):
        table.add_row("checkpoint", f"{checkpoint.path} (step {checkpoint.step})")
    _console().print(table)
    return 0


def runs_stop(args: argparse.Namespace) -> int:
    from rich.console import Console

    from loops_runner.runner.hosted_runs import stop_run, stop_session
    from loops_runner.runner.lifecycle import print_stopped

    if (args.run is None) == (args.session is None):
        raise SystemExit("loops-runner: runs stop takes a run (id or run dir) or --session")
    control_plane = _control_plane(args)
    if args.session is not None:
        stopped = stop_session(control_plane, args.session)
        what = f"session {args.session}"
    else:
        run = control_plane.get_run(run_id_of(args.run))
        stopped = [stop_run(control_plane, run)]
        what = f"run {run.id}"
    print_stopped(stopped, Console(), what)
    return 0 if all(item.ok for item in stopped) else 1


def main(args: argparse.Namespace) -> int:
    from loops_runner.sdk.errors import RequestRejectedError

    command = {"list": runs_list, "show": runs_show, "stop": runs_stop}[args.runs_command]
    try:
        return command(args)
    except RequestRejectedError as error:
        raise SystemExit(f"loops-runner: {error}") from None
