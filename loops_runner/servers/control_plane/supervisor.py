"""Supervision: keeps each deployment's server process and its status in step.

The supervisor starts a deployment's process (``processes``), probes it until
its health route answers 200, and records each status move the state machine
allows (``deployment_states``): ready, ``FAILED`` with the exit status and the
last log lines when the process dies or never becomes healthy, ``STOPPED``
when it is idle, deactivated or the control plane shuts down. Every change is
kept as an event in the store.

A watcher task checks the children every ``poll_interval`` seconds (so a death
shows within about a second), probes deploying ones, and stops idle ones: idle
means neither the child (``GET /internal/activity``, served for every app by
``serve_app``) nor the control plane (creates and reuse) saw a request for the
idle timeout.

A server that crashes after it had been healthy is restarted once, on the same
port, so clients holding its URL reach the new process (which then answers
for runs it no longer knows, instead of leaving them retrying a dead port).
The deployment reads ``FAILED`` until the restarted process is healthy. After
a final failure or a stop, a small tombstone listener keeps the port and
answers every request with a permanent error naming the reason, because the
SDK retries refused connections for up to an hour.

One class, a little over the usual module size: launch, probe, exit, stop and
the idle sweep all take the same per-deployment lock and read the same table
of children, and splitting them would pass that state around.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import time
from collections import Counter
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from loops_runner.servers.control_plane import deployment_states as states
from loops_runner.servers.control_plane.deployment_states import (
    DEPLOYING,
    FAILED,
    LIVE_STATUSES,
    OPEN_RUN_STATUSES,
    PAIRED,
    READY_STATUSES,
    RUNNING,
    STOPPED,
    TRAINER,
)
from loops_runner.servers.control_plane.probes import WRONG_MODEL, Probes
from loops_runner.servers.control_plane.processes import (
    AdoptedHandle,
    Child,
    PopenHandle,
    describe_exit,
    runs_our_server,
    spawn,
    stop_process,
    with_log_tail,
)
from loops_runner.servers.control_plane.store import Store
from loops_runner.servers.control_plane.tables import DeploymentRow
from loops_runner.servers.control_plane.tombstone import Tombstones
from loops_runner.servers.launch import ServerStartError

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Supervisor:
    def __init__(
        self,
        store: Store,
        home: Path,
        *,
        idle_timeout: float,
        deploy_timeout: float = 1800.0,
        start_timeout: float = 180.0,
        poll_interval: float = 1.0,
    ) -> None:
        self.store = store
        self.home = home
        self.log_dir = home / "logs"
        self.idle_timeout = idle_timeout
        self.deploy_timeout = deploy_timeout
        self.start_timeout = start_timeout
        self.poll_interval = poll_interval
        self.idle_check_interval = min(30.0, max(0.5, idle_timeout / 4))
        self.tombstones = Tombstones()
        self._children: dict[str, Child] = {}
        self._restarting: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._cp_activity: dict[str, float] = {}
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[object]] = set()
        self._holds: Counter[str] = Counter()
        self.probes = Probes()

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        await self._reconcile()
        self._task = asyncio.create_task(self._watch(), name="deployment-watcher")

    async def close(self) -> None:
        """Stop every child (the control plane is going away)."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        stopped: set[str] = set()
        # Two rounds: a launch in flight may register its child while the first
        # round stops the others; it sees ``_closing`` and gives up once its
        # process is gone.
        for _ in range(2):
            children = list(self._children.values())
            for child in children:
                child.stopping = True
            await asyncio.gather(*(asyncio.to_thread(stop_process, child.handle)
                                   for child in children))
            for child in children:
                self._children.pop(child.deployment_id, None)
                stopped.add(child.deployment_id)
            if self._background:
                await asyncio.wait(list(self._background), timeout=30.0)
        for deployment_id in stopped:
            self._mark_stopped(deployment_id, "the control plane shut down")
        self.tombstones.close_all()
        await self.probes.aclose()

    def lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    def note_activity(self, deployment_id: str) -> None:
        """Control-plane-side use of a deployment (a run or sampler handed out)."""
        self._cp_activity[deployment_id] = time.time()

    @contextlib.contextmanager
    def hold(self, deployment_id: str) -> Iterator[None]:
        """Keep a deployment from idling out while a create call is still using it."""
        self._holds[deployment_id] += 1
        try:
            yield
        finally:
            self._holds[deployment_id] -= 1
            if self._holds[deployment_id] <= 0:
                del self._holds[deployment_id]
            self.note_activity(deployment_id)

    def pid_of(self, deployment_id: str) -> int | None:
        child = self._children.get(deployment_id)
        return child.handle.pid if child else None

    def is_restarting(self, deployment_id: str) -> bool:
        return deployment_id in self._restarting

    # -- provisioning ----------------------------------------------------------

    async def provision(
        self,
        *,
        kind: str,
        role: str,
        base_model: str,
        launch_model: str,
        session_id: str | None,
        trainer_deployment_id: str | None = None,
    ) -> DeploymentRow:
        """Create a deployment and start its process; returns once it listens (or failed)."""
        row = self.store.create_deployment(
            kind=kind, role=role, base_model=base_model, launch_model=launch_model,
            log_dir=self.log_dir, session_id=session_id,
            trainer_deployment_id=trainer_deployment_id,
        )
        self.note_activity(row.id)

        async def launch() -> None:
            async with self.lock(row.id):
                await self._launch(row, port=0)

        await self._shielded(launch())
        return self._row(row.id)

    async def _shielded(self, work: Coroutine[object, object, T]) -> T:
        """Run ``work`` to the end even if the request awaiting it is cancelled
        (a client that gives up must not leave a half-started, unsupervised child)."""
        task: asyncio.Task[T] = asyncio.create_task(work)
        self._background.add(task)  # type: ignore[arg-type]
        task.add_done_callback(self._background.discard)  # type: ignore[arg-type]
        return await asyncio.shield(task)

    async def _launch(self, row: DeploymentRow, port: int) -> bool:
        """Start the process of ``row`` and wait for its URL (not for health)."""
        if port:
            self.tombstones.release(port)

        def on_spawn(process: subprocess.Popen[bytes]) -> None:
            self._children[row.id] = Child(row.id, PopenHandle(process))
            self.store.set_process(row.id, pid=process.pid)

        try:
            server = await asyncio.to_thread(
                spawn, row, self.home, port, start_timeout=self.start_timeout,
                on_spawn=on_spawn,
            )
        except (ServerStartError, OSError) as exc:
            child = self._children.pop(row.id, None)
            if child is not None:
                await asyncio.to_thread(stop_process, child.handle, 2.0)
            self._restarting.pop(row.id, None)
            if self._closing:
                self._mark_stopped(row.id, "the control plane shut down while it started")
            else:
                self.store.set_status(row.id, FAILED, f"{row.kind} server did not start: {exc}")
                self._fail_runs(row, f"its trainer deployment {row.id} did not start")
            return False
        child = self._children.get(row.id)
        if child is None:  # stopped by close() meanwhile
            return False
        child.url = server.url
        self.store.set_process(row.id, pid=server.pid, url=server.url,
                               port=urlsplit(server.url).port)
        if self._closing:
            child.stopping = True
            await asyncio.to_thread(stop_process, child.handle)
            self._children.pop(row.id, None)
            self._mark_stopped(row.id, "the control plane shut down while it started")
            return False
        return True

    async def wait_ready(self, deployment_id: str, timeout: float) -> DeploymentRow:
        """Wait until ready, finally failed/stopped, or ``timeout``; returns the row then."""
        deadline = time.monotonic() + timeout
        while True:
            row = self._row(deployment_id)
            if row.status in READY_STATUSES:
                return row
            if row.status not in LIVE_STATUSES and deployment_id not in self._restarting:
                if not self.lock(deployment_id).locked():
                    return row
            else:
                await self._probe(row)
                row = self._row(deployment_id)
                if row.status in READY_STATUSES:
                    return row
            if time.monotonic() >= deadline:
                return row
            await asyncio.sleep(0.25)

    async def ensure_usable(self, deployment_id: str, timeout: float) -> bool:
        """Whether a deployment can take new work now: alive and healthy (waits for it).

        A dead process found here is handled like the watcher would (failed,
        restarted once), so reuse never hands out a dead URL.
        """
        await self._check_exit(deployment_id)
        row = self._row(deployment_id)
        if deployment_id not in self._children and deployment_id not in self._restarting:
            return False
        if row.status not in LIVE_STATUSES and deployment_id not in self._restarting:
            return False
        row = await self.wait_ready(deployment_id, timeout)
        if row.status not in READY_STATUSES:
            return False
        child = self._children.get(deployment_id)
        if child is None or child.url is None:
            return False
        if await self.probes.health_status(row, child.url) != 200:
            return False
        self.note_activity(deployment_id)
        return True

    async def stop(self, deployment_id: str, reason: str) -> DeploymentRow:
        return await self._shielded(self._stop(deployment_id, reason))

    async def _stop(self, deployment_id: str, reason: str) -> DeploymentRow:
        async with self.lock(deployment_id):
            child = self._children.pop(deployment_id, None)
            self._restarting.pop(deployment_id, None)
            if child is not None:
                child.stopping = True
                await asyncio.to_thread(stop_process, child.handle)
            row = self._row(deployment_id)
            if states.can_move(row.status, STOPPED):
                self._mark_stopped(deployment_id, reason)
            row = self._row(deployment_id)
            if row.port and not self._closing:
                await self.tombstones.install(row, f"{row.kind} deployment {row.id} is "
                                                   f"{row.status}: {row.reason}")
            return row

    # -- status transitions ------------------------------------------------------

    def _row(self, deployment_id: str) -> DeploymentRow:
        row = self.store.get_deployment(deployment_id)
        if row is None:  # pragma: no cover - ids come from the store
            raise KeyError(deployment_id)
        return row

    def _mark_stopped(self, deployment_id: str, reason: str) -> None:
        row = self._row(deployment_id)
        if not states.can_move(row.status, STOPPED):
            return
        self.store.set_status(deployment_id, STOPPED, reason)
        if row.kind == TRAINER:
            self.store.set_runs_status_of(
                deployment_id, STOPPED, f"its trainer deployment {deployment_id} stopped: "
                                        f"{reason}", only_from=OPEN_RUN_STATUSES)

    def _fail_runs(self, row: DeploymentRow, why: str) -> None:
        if row.kind != TRAINER:
            return
        self.store.set_runs_status_of(
            row.id, FAILED,
            f"{why}; the run's in-memory adapter and optimizer state are lost. Start a new "
            "run (create_training_client_from_state to resume from a checkpoint).",
            only_from=OPEN_RUN_STATUSES)

    def _mark_ready(self, row: DeploymentRow) -> None:
        allowed = states.ready_sources(row.id in self._restarting)
        reason = "restarted after a crash" if row.id in self._restarting else None
        if self.store.set_status(row.id, row.ready_status, reason, only_from=allowed):
            self._restarting.pop(row.id, None)
            self.note_activity(row.id)
            if row.kind == TRAINER:
                self.store.set_runs_status_of(row.id, RUNNING, None, only_from=(DEPLOYING,))

    async def _probe(self, row: DeploymentRow) -> None:
        """One readiness probe of a deploying (or restarting) deployment."""
        child = self._children.get(row.id)
        if child is None or child.stopping:
            return
        restarting_since = self._restarting.get(row.id)
        age = (time.monotonic() - restarting_since if restarting_since is not None
               else time.time() - child.started_at)
        if age > self.deploy_timeout:
            message = (f"{row.kind} server did not become healthy within "
                       f"{self.deploy_timeout:.0f}s")
            await self._shielded(self._fail(row.id, message))
            return
        if child.url is None:
            return
        status = await self.probes.health_status(row, child.url)
        if status == 200:
            self._mark_ready(row)
        elif status == WRONG_MODEL:
            await self._shielded(self._fail(
                row.id, f"{row.kind} server at {child.url} does not serve {row.launch_model!r}"))

    async def _fail(self, deployment_id: str, message: str) -> None:
        async with self.lock(deployment_id):
            child = self._children.pop(deployment_id, None)
            self._restarting.pop(deployment_id, None)
            if child is None:  # already failed or stopped by someone else
                return
            child.stopping = True
            await asyncio.to_thread(stop_process, child.handle)
            row = self._row(deployment_id)
            reason = with_log_tail(message, row.log_path)
            self.store.set_status(deployment_id, FAILED, reason)
            self._fail_runs(row, f"its trainer deployment {deployment_id} failed")
            if row.port:
                await self.tombstones.install(row, f"{row.kind} deployment {row.id} failed: "
                                                   f"{message}")

    async def _check_exit(self, deployment_id: str) -> None:
        child = self._children.get(deployment_id)
        if (child is not None and child.url is not None and not child.stopping
                and child.handle.exit_code() is not None):
            await self._on_exit(child)

    async def _on_exit(self, child: Child) -> None:
        """A supervised process died on its own: FAILED, then maybe one restart."""
        deployment_id = child.deployment_id
        async with self.lock(deployment_id):
            if self._children.get(deployment_id) is not child or child.stopping:
                return
            del self._children[deployment_id]
            row = self._row(deployment_id)
            cause = describe_exit(row.kind, child.handle.pid, child.handle.exit_code())
            decision = states.after_exit(closing=self._closing, ready_once=bool(row.ready_once),
                                         restarts=row.restarts, has_port=row.port is not None)
            note = decision.note
            self.store.set_status(deployment_id, FAILED,
                                  with_log_tail(f"{cause}; {note}", row.log_path))
            self._fail_runs(row, f"its trainer deployment {deployment_id} failed ({cause})")
            logger.warning("deployment %s: %s; %s", deployment_id, cause, note)
            if not decision.restart:
                self._restarting.pop(deployment_id, None)
                if row.port:
                    await self.tombstones.install(row, f"{row.kind} deployment {row.id} "
                                                       f"failed: {cause}")
                return
            self._restarting[deployment_id] = time.monotonic()
            self.store.count_restart(deployment_id)
            assert row.port is not None
            await self._launch(row, port=row.port)

    # -- the watcher -------------------------------------------------------------

    async def _watch(self) -> None:
        last_idle_check = time.monotonic()
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self._watch_once()
                if time.monotonic() - last_idle_check >= self.idle_check_interval:
                    last_idle_check = time.monotonic()
                    await self._idle_sweep()
            except asyncio.CancelledError:
                raise
            except Exception:  # the watcher must survive anything one child does
                logger.exception("deployment watcher iteration failed")

    async def _watch_once(self) -> None:
        for child in list(self._children.values()):
            if child.url is not None and not child.stopping \
                    and child.handle.exit_code() is not None:
                # Shielded: a restart must not be abandoned half-way if the
                # watcher is cancelled at shutdown.
                await self._shielded(self._on_exit(child))
        probes = []
        for deployment_id in list(self._children):
            row = self._row(deployment_id)
            if row.status == DEPLOYING or deployment_id in self._restarting:
                probes.append(self._probe(row))
        if probes:
            await asyncio.gather(*probes)

    async def _idle_sweep(self) -> None:
        now = time.time()
        idle: dict[str, float] = {}
        rows: dict[str, DeploymentRow] = {}
        for deployment_id, child in list(self._children.items()):
            row = self._row(deployment_id)
            if row.status not in READY_STATUSES or child.stopping \
                    or deployment_id in self._holds:
                continue
            if child.url is None:
                continue
            child_idle = await self.probes.idle_seconds(deployment_id, child.url)
            if child_idle is None:
                continue
            control_plane_idle = now - self._cp_activity.get(deployment_id, child.started_at)
            idle[deployment_id] = min(child_idle, control_plane_idle)
            rows[deployment_id] = row
        for deployment_id, row in rows.items():
            seconds = idle[deployment_id]
            # A paired sampler lives as long as its trainer is in use: a long
            # training stretch without samples must not take it away.
            if row.role == PAIRED and row.trainer_deployment_id in idle:
                seconds = min(seconds, idle[row.trainer_deployment_id])
            if seconds >= self.idle_timeout and deployment_id not in self._holds:
                await self.stop(deployment_id,
                                f"idle for {seconds:.0f}s (no requests or heartbeats; idle "
                                f"timeout {self.idle_timeout:.0f}s)")

    # -- restart of the control plane ----------------------------------------------

    async def _reconcile(self) -> None:
        """Adopt children an earlier, killed control plane left running; stop the rest."""
        for row in self.store.list_deployments(statuses=LIVE_STATUSES):
            if row.pid and row.url and await self._adoptable(row):
                self._children[row.id] = Child(row.id, AdoptedHandle(row.pid), url=row.url)
                self.note_activity(row.id)
                logger.info("adopted %s deployment %s (pid %s)", row.kind, row.id, row.pid)
                continue
            self._mark_stopped(row.id, "the control plane restarted and the server process "
                                       "was no longer running")

    async def _adoptable(self, row: DeploymentRow) -> bool:
        assert row.pid is not None and row.url is not None
        if not runs_our_server(row.pid, row.kind, self.home):
            return False
        return await self.probes.health_status(row, row.url) is not None
