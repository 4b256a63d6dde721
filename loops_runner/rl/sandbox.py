"""Running untrusted code (model output) for envs and rewards, contained.

    from loops_runner.rl.sandbox import ProcessSandbox, SandboxLimits

    result = ProcessSandbox().run("print(sum(range(10)))", limits=SandboxLimits(wall_s=2))
    result.outcome, result.stdout     # "ok", "45\\n"

A :class:`Sandbox` runs one Python program and answers a
:class:`SandboxResult`: stdout, stderr, exit status, and an ``outcome`` that
says why it ended — ``ok``, ``error`` (the program failed on its own: a
non-zero exit or an exception), or a containment: ``timeout`` (wall clock),
``cpu``, ``memory``, ``processes``, ``network``, ``filesystem``, ``forbidden``
(a refused capability), ``output`` (file-size limit). ``result.contained`` is
true for the containments; envs report those as episode errors (they land in
``rollout/errors`` with the reason), and score the rest.

:class:`ProcessSandbox` (the default) runs a fresh interpreter
(``python -I -S -B``: no site-packages, no ``PYTHON*`` variables) in its own
session, in a scratch directory that is removed afterwards, with ``HOME`` and
``TMPDIR`` inside it, under resource limits, in new user + network namespaces
when the kernel allows it, and behind an audit hook (``sandbox_child.py`` says
what each layer does and what it does not). ``network_isolation`` in the result
says which network fence applied: ``namespace`` (no interface to reach
anything) or ``interpreter`` (socket creation refused by the audit hook only).
Whatever the program leaves running is killed with its process group.

:class:`ContainerSandbox` runs the same program in a container runtime
(``docker`` or ``podman``) behind the same API, for code that must not
escape: ``make_sandbox("docker:python:3.11-slim")``. See docs/rl.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Outcome = Literal["ok", "error", "timeout", "cpu", "memory", "processes", "network",
                  "filesystem", "forbidden", "output"]
CONTAINED: frozenset[str] = frozenset({"timeout", "cpu", "memory", "processes", "network",
                                       "filesystem", "forbidden", "output"})
NetworkIsolation = Literal["namespace", "interpreter", "container", "none"]

CHILD = Path(__file__).with_name("sandbox_child.py")
PROGRAM_NAME = "main.py"


class SandboxLimits(BaseModel):
    """What one run may use. Every field is checked; out of range is a clear error."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    wall_s: float = Field(5.0, gt=0, le=600, description="wall-clock seconds")
    cpu_s: int = Field(2, ge=1, le=600, description="CPU seconds")
    memory_mb: int = Field(512, ge=64, le=65536, description="address space (RLIMIT_AS)")
    max_processes: int = Field(8, ge=1, le=256, description="processes the program may fork")
    file_size_mb: int = Field(16, ge=1, le=4096, description="largest file it may write")
    open_files: int = Field(64, ge=16, le=4096, description="open file descriptors")
    max_output_bytes: int = Field(65536, ge=1024, le=16 * 1024 * 1024,
                                  description="stdout and stderr kept, each")
    network: bool = Field(False, description="allow network access (off by default)")


class SandboxResult(BaseModel):
    """How one run ended."""

    model_config = ConfigDict(extra="forbid")

    outcome: Outcome
    reason: str  # one line: what happened, naming the limit when one was hit
    exit_code: int | None  # None when killed by a signal (see ``signal``) or by the timeout
    signal: int | None = None
    stdout: str = ""
    stderr: str = ""
    wall_s: float = 0.0
    network_isolation: NetworkIsolation = "none"

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def contained(self) -> bool:
        """The sandbox stopped the program (a limit or a refused capability)."""
        return self.outcome in CONTAINED


class SandboxError(RuntimeError):
    """A contained run, raised by envs so the episode fails with the reason."""

    def __init__(self, result: SandboxResult) -> None:
        super().__init__(f"{result.outcome}: {result.reason}")
        self.result = result


class Sandbox(ABC):
    """Runs one Python program, contained; implementations share this API."""

    def run(self, program: str, *, limits: SandboxLimits | None = None,
            files: dict[str, str] | None = None, stdin: str = "") -> SandboxResult:
        """Run ``program`` (Python source) with ``files`` (relative path -> text) beside
        it in a fresh scratch directory, which is removed afterwards."""
        files = files or {}
        _check_files(files)
        root = Path(tempfile.mkdtemp(prefix="loops-sandbox-"))
        try:
            return self.execute(root, program, limits or SandboxLimits(), files, stdin)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    @abstractmethod
    def execute(self, root: Path, program: str, limits: SandboxLimits, files: dict[str, str],
                stdin: str) -> SandboxResult:
        """Run it in ``root`` (a fresh directory that ``run`` removes afterwards)."""


def _check_files(files: dict[str, str]) -> None:
    for name in files:
        parts = Path(name).parts
        if not parts or Path(name).is_absolute() or ".." in parts or name == PROGRAM_NAME:
            raise ValueError(f"sandbox files: {name!r} must be a relative path inside the "
                             f"scratch directory (not {PROGRAM_NAME})")


def _write_files(work: Path, program: str, files: dict[str, str]) -> Path:
    for name, text in files.items():
        target = work / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    main = work / PROGRAM_NAME
    main.write_text(program)
    return main


def _read(path: Path, limit: int) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        return ""
    text = data[:limit].decode("utf-8", errors="replace")
    return text + "\n[... output cut at the sandbox limit]" if len(data) > limit else text


def _user_processes() -> int:
    """Tasks (threads count) of this user, which RLIMIT_NPROC counts."""
    uid = os.getuid()
    total = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    total += len(os.listdir(f"/proc/{entry.name}/task"))
            except OSError:
                continue
    return total


def _kill_group(pgid: int) -> None:
    """SIGKILL the session's group until nothing in it answers (at most ~0.5 s: a
    member that died but nobody reaped still answers)."""
    for _ in range(50):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.01)


class ProcessSandbox(Sandbox):
    """A fresh interpreter in its own session and scratch directory (Linux)."""

    def __init__(self, python: str | None = None) -> None:
        self.python = python or sys.executable

    def execute(self, root: Path, program: str, limits: SandboxLimits, files: dict[str, str],
                stdin: str) -> SandboxResult:
        work, control = root / "work", root / "control"
        for folder in (work, work / "home", work / "tmp", control):
            folder.mkdir()
        main = _write_files(work, program, files)
        settings = {
            "program": str(main), "scratch": str(work), "network": limits.network,
            "memory_mb": limits.memory_mb, "cpu_s": limits.cpu_s,
            "file_size_mb": limits.file_size_mb, "open_files": limits.open_files,
            "max_processes": limits.max_processes,
            # RLIMIT_NPROC counts every task of the user, not only the sandbox's.
            "nproc_limit": _user_processes() + limits.max_processes + 1,
            "violation_file": str(control / "violation.json"),
            "fork_file": str(control / "forks"),
            "isolation_file": str(control / "isolation"),
        }
        (control / "settings.json").write_text(json.dumps(settings))
        env = {"HOME": str(work / "home"), "TMPDIR": str(work / "tmp"), "PATH": "/usr/bin:/bin",
               "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}
        started = time.monotonic()
        with open(control / "stdout", "wb") as out, open(control / "stderr", "wb") as err:
            process = subprocess.Popen(
                [self.python, "-I", "-S", "-B", str(CHILD), str(control / "settings.json")],
                cwd=work, env=env, stdin=subprocess.PIPE, stdout=out, stderr=err,
                start_new_session=True, close_fds=True)
            timed_out = False
            try:
                process.communicate(stdin.encode(), timeout=limits.wall_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                with contextlib.suppress(ProcessLookupError):  # it may have just ended
                    os.killpg(process.pid, signal.SIGKILL)
            finally:
                process.wait()
                _kill_group(process.pid)  # whatever it left behind
        wall = time.monotonic() - started
        isolation_text = _read(control / "isolation", 64).strip()
        isolation: NetworkIsolation = "none" if limits.network else \
            "namespace" if isolation_text == "namespace" else "interpreter"
        violation = None
        if (control / "violation.json").exists():
            try:
                violation = json.loads(_read(control / "violation.json", 4096))
            except json.JSONDecodeError:
                violation = None
        outcome, reason = _classify(process.returncode, timed_out, violation, limits)
        code = process.returncode
        return SandboxResult(
            outcome=outcome, reason=reason,
            exit_code=None if timed_out or code < 0 else code,
            signal=-code if code < 0 and not timed_out else None,
            stdout=_read(control / "stdout", limits.max_output_bytes),
            stderr=_read(control / "stderr", limits.max_output_bytes),
            wall_s=round(wall, 4), network_isolation=isolation)


def _classify(code: int, timed_out: bool, violation: dict | None,
              limits: SandboxLimits) -> tuple[Outcome, str]:
    """The outcome and its one-line reason; a refused capability is the cause even
    when the program caught the refusal and then ran out of time."""
    if violation is not None and violation.get("kind") in CONTAINED:
        kind = violation["kind"]
        message = str(violation.get("message", kind))
        if kind == "memory":
            return "memory", f"out of memory at the {limits.memory_mb} MB address-space limit"
        if kind == "processes":
            return "processes", f"refused: {message} (limit {limits.max_processes})"
        if kind == "output":
            return "output", f"wrote past the {limits.file_size_mb} MB file-size limit"
        return kind, f"refused: {message}"
    if timed_out:
        return "timeout", f"still running after the {limits.wall_s:g} s wall-clock limit"
    if code == -signal.SIGXCPU:
        return "cpu", f"used the {limits.cpu_s} s CPU limit"
    if code == -signal.SIGKILL:  # the hard CPU limit, one second past the soft one
        return "cpu", (f"killed at the {limits.cpu_s + 1} s hard CPU limit (or by the "
                       "kernel's out-of-memory killer)")
    if code == -signal.SIGXFSZ:  # Python ignores it; a program that re-enables it
        return "output", f"wrote past the {limits.file_size_mb} MB file-size limit"
    if code == 0:
        return "ok", "exited 0"
    if code < 0:
        return "error", f"killed by signal {-code}"
    return "error", f"exited {code}"


class ContainerSandbox(Sandbox):
    """The same API on a container runtime: ``docker`` or ``podman`` with ``image``.

    The scratch directory is mounted at ``/work`` (the only writable place
    besides a small ``/tmp``); the container has no network, a memory and a
    process limit, one CPU, a read-only root file system, no capabilities, and
    runs as ``nobody``. The runtime enforces the limits, so the outcome names
    fewer causes: ``timeout``, ``memory`` (killed by the OOM killer: exit 137),
    ``error`` or ``ok``. The image must provide ``python``.
    """

    def __init__(self, runtime: str = "docker", image: str = "python:3.11-slim") -> None:
        if shutil.which(runtime) is None:
            raise ValueError(f"sandbox: container runtime {runtime!r} is not on PATH")
        self.runtime, self.image = runtime, image

    def command(self, work: Path, name: str, limits: SandboxLimits) -> list[str]:
        network = [] if limits.network else ["--network", "none"]
        return [self.runtime, "run", "--rm", "-i", "--name", name, *network,
                "--memory", f"{limits.memory_mb}m", "--memory-swap", f"{limits.memory_mb}m",
                "--pids-limit", str(limits.max_processes + 1), "--cpus", "1",
                "--ulimit", f"cpu={limits.cpu_s}:{limits.cpu_s + 1}",
                "--ulimit", f"fsize={limits.file_size_mb * 1024 * 1024}",
                "--read-only", "--tmpfs", "/tmp:size=64m", "--cap-drop", "ALL",
                "--security-opt", "no-new-privileges", "--user", "65534:65534",
                "-v", f"{work}:/work:rw", "-w", "/work", "-e", "HOME=/work/home",
                self.image, "python", "-I", "-B", PROGRAM_NAME]

    def execute(self, root: Path, program: str, limits: SandboxLimits, files: dict[str, str],
                stdin: str) -> SandboxResult:
        name = f"loops-sandbox-{uuid.uuid4().hex[:12]}"
        work = root / "work"
        (work / "home").mkdir(parents=True)
        _write_files(work, program, files)
        # The container runs as nobody: it must read the files and write the folder.
        os.chmod(root, 0o755)
        for path in [work, *work.rglob("*")]:
            os.chmod(path, 0o777 if path.is_dir() else 0o666)
        started = time.monotonic()
        timed_out = False
        try:
            done = subprocess.run(self.command(work, name, limits), input=stdin.encode(),
                                  capture_output=True, timeout=limits.wall_s)
            code, out, err = done.returncode, done.stdout, done.stderr
        except subprocess.TimeoutExpired as expired:
            timed_out, code = True, -signal.SIGKILL
            out, err = expired.stdout or b"", expired.stderr or b""
            subprocess.run([self.runtime, "kill", name], capture_output=True, timeout=30)
        wall = time.monotonic() - started
        if timed_out:
            outcome, reason = "timeout", f"still running after the {limits.wall_s:g} s limit"
        elif code == 137:
            outcome, reason = "memory", f"killed at the {limits.memory_mb} MB memory limit"
        elif code == 0:
            outcome, reason = "ok", "exited 0"
        else:
            outcome, reason = "error", f"exited {code}"
        cut = limits.max_output_bytes
        return SandboxResult(outcome=outcome, reason=reason,  # type: ignore[arg-type]
                             exit_code=None if timed_out else code,
                             stdout=out[:cut].decode("utf-8", "replace"),
                             stderr=err[:cut].decode("utf-8", "replace"),
                             wall_s=round(wall, 4), network_isolation="container")


def make_sandbox(spec: str = "process") -> Sandbox:
    """``process`` (default), ``docker[:IMAGE]`` or ``podman[:IMAGE]``."""
    kind, _, image = spec.partition(":")
    if kind == "process" and not image:
        return ProcessSandbox()
    if kind in ("docker", "podman"):
        return ContainerSandbox(kind, image or "python:3.11-slim")
    raise ValueError(f"sandbox: {spec!r} is not one of process, docker[:IMAGE], "
                     "podman[:IMAGE]")
