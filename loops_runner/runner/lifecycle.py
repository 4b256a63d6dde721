"""When a runner job ends: stop or keep what it provisioned, say so, and say what it used.

A hosted trainer bills until it is stopped (on Baseten a dedicated run idles
out after an hour), so on hosted backends a job stops every run and
standalone sampler of its session when it ends, however it ends: completed,
failed, interrupted or out of budget. ``session.keep_warm: true`` keeps them
for the next command; the local backend keeps them by default, which is how a
second local run starts on a warm trainer. In a sweep the jobs leave their
session running for the next job to reuse and the sweep stops them all at its
end (``stop_sweep_sessions``).

What a job used is written to ``run.json`` (``trainer_seconds`` x
``replicas``, ``tokens``) and printed in its summary.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from filelock import FileLock
from rich.console import Console
from rich.table import Table

from loops_runner.runner.backends import backend_of
from loops_runner.runner.config import PricesSection, RunnerConfig
from loops_runner.runner.hosted_runs import Stopped, stop_session
from loops_runner.sdk.control_plane import ControlPlaneClient
from loops_runner.sdk.errors import LoopsError
from loops_runner.sdk.usage import TokenCounts, token_usage

SWEEP_SESSIONS_FILE = "service_sessions.jsonl"  # in the sweep dir: sessions to stop at its end


def keeps_warm(config: RunnerConfig) -> bool:
    if config.session.keep_warm is not None:
        return config.session.keep_warm
    return backend_of(config).keeps_warm_by_default


@dataclass
class ServiceUse:
    """What one job attempt held on the service, from its first create on."""

    replicas: int
    started: float = field(default_factory=time.monotonic)
    tokens_at_start: TokenCounts = field(default_factory=token_usage)

    def seconds(self) -> float:
        return time.monotonic() - self.started

    def tokens(self) -> TokenCounts:
        return token_usage() - self.tokens_at_start


def record_use(record: Any, use: ServiceUse) -> None:
    """Add this attempt's trainer time and tokens to the run record (all attempts count)."""
    record.trainer_seconds = round(record.trainer_seconds + use.seconds(), 1)
    record.replicas = use.replicas
    previous = TokenCounts(**record.tokens) if record.tokens else TokenCounts()
    record.tokens = (previous + use.tokens()).as_dict()


def release(config: RunnerConfig, service: Any, console: Console,
            sweep_dir: Path | None) -> list[Stopped]:
    """Stop the job's session, or keep it and say how to reuse and stop it."""
    session_id = getattr(service, "session_id", None)
    control_plane = getattr(service, "control_plane", None)
    if not backend_of(config).provisions or control_plane is None or not session_id:
        console.print("Service: servers you started yourself (backend=external); "
                      "nothing to stop.")
        return []
    stop_hint = f"loops-runner runs stop --session {session_id}{backend_of(config).cli_flags()}"
    if keeps_warm(config):
        console.print(f"Service: kept warm (session.keep_warm). Reuse it with "
                      f"session.reuse_from_session_id={session_id}; stop it with: "
                      f"{stop_hint}", soft_wrap=True)
        return []
    if sweep_dir is not None:
        _register_for_sweep(sweep_dir, config, session_id)
        console.print(f"Service: session {session_id} stays up for the sweep's next jobs; "
                      "the sweep stops it when it ends.")
        return []
    try:
        stopped = stop_session(control_plane, session_id)
    except (LoopsError, httpx.HTTPError) as error:
        # Never hide the run's own outcome (and its automatic retry) behind this.
        console.print(f"[red]Service: could not stop session {session_id} ({error}).[/red] "
                      f"Stop it with: {stop_hint}", soft_wrap=True)
        return []
    print_stopped(stopped, console, f"session {session_id}")
    return stopped


def print_stopped(stopped: list[Stopped], console: Console, what: str) -> None:
    if not stopped:
        console.print(f"Service: nothing of {what} was still running.")
        return
    table = Table(title=f"stopped on the service ({what})", show_header=True)
    for column in ("kind", "id", "outcome"):
        table.add_column(column)
    for item in stopped:
        table.add_row(item.kind, item.id, item.outcome)
    console.print(table)


def print_use(record: Any, console: Console, prices: PricesSection | None = None) -> None:
    tokens = record.tokens or {}
    cost = f"; ${prices.cost_usd(tokens):.4f} at your prices.*" \
        if prices is not None and prices.priced else ""
    console.print(
        f"Used: trainer {record.trainer_seconds:.1f} s x {record.replicas} "
        f"replica{'s' if record.replicas != 1 else ''} = "
        f"{record.trainer_seconds * record.replicas:.1f} replica-seconds; tokens trained "
        f"{tokens.get('trained', 0)}, prompt {tokens.get('prompt', 0)}, sampled "
        f"{tokens.get('sampled', 0)}{cost} (run.json)")


# -- sweeps --------------------------------------------------------------------------


def _register_for_sweep(sweep_dir: Path, config: RunnerConfig, session_id: str) -> None:
    line = {"session_id": session_id, "backend": config.backend.model_dump(mode="json")}
    path = sweep_dir / SWEEP_SESSIONS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"), path.open("a") as handle:
        handle.write(json.dumps(line) + "\n")


def _control_plane_of(backend: dict[str, Any]) -> ControlPlaneClient | None:
    """A client of the control plane a sweep job used (None: nothing left to reach)."""
    if backend.get("kind") == "baseten":
        base_url = backend.get("base_url") or os.environ.get("LOOPS_BASE_URL")
        api_key = os.environ.get(str(backend.get("api_key_env") or "BASETEN_API_KEY"))
        return ControlPlaneClient(base_url or "https://api.baseten.co", api_key)
    if backend.get("kind") == "local":
        if backend.get("control_plane_url"):
            return ControlPlaneClient(backend["control_plane_url"],
                                      os.environ.get("BASETEN_API_KEY"))
        from loops_runner.home import loops_home
        from loops_runner.runner.local_daemon import find_control_plane

        # No daemon running means its servers are gone too.
        daemon = find_control_plane(loops_home(backend.get("home")))
        return ControlPlaneClient(daemon.url, daemon.api_key) if daemon else None
    return None


def stop_sweep_sessions(sweep_dir: Path, console: Console) -> list[Stopped]:
    """At a sweep's end: stop the sessions its jobs left up for each other."""
    path = sweep_dir / SWEEP_SESSIONS_FILE
    if not path.is_file():
        return []
    seen: set[str] = set()
    stopped: list[Stopped] = []
    for raw in path.read_text().splitlines():
        try:
            line = json.loads(raw)
        except json.JSONDecodeError:
            continue
        session_id = line.get("session_id")
        if not session_id or session_id in seen:
            continue
        seen.add(session_id)
        control_plane = _control_plane_of(line.get("backend") or {})
        if control_plane is None:
            continue
        try:
            stopped += stop_session(control_plane, session_id)
        except (LoopsError, httpx.HTTPError) as error:  # the others must still be stopped
            stopped.append(Stopped("session", session_id, f"failed: {error}"))
    path.unlink()
    print_stopped(stopped, console, f"the sweep's {len(seen)} session(s)")
    return stopped


def sweep_use(run_dirs: list[Path]) -> tuple[float, dict[str, int]]:
    """Replica-seconds and tokens of a sweep's runs, summed from their run.json files."""
    from loops_runner.runner.run_record import RunRecord

    replica_seconds, tokens = 0.0, TokenCounts()
    for run_dir in run_dirs:
        record = RunRecord.load(run_dir)
        if record is None:
            continue
        replica_seconds += record.trainer_seconds * record.replicas
        if record.tokens:
            tokens = tokens + TokenCounts(**record.tokens)
    return replica_seconds, tokens.as_dict()
