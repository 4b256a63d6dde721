"""The sandbox against hostile code: each attack is contained with the right reason."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from loops_runner.rl.sandbox import (
    ProcessSandbox,
    SandboxLimits,
    make_sandbox,
)

FAST = SandboxLimits(wall_s=2.0, cpu_s=1, max_processes=4)


@pytest.fixture(scope="module")
def sandbox() -> ProcessSandbox:
    return ProcessSandbox()


def sandbox_dirs() -> set[str]:
    import tempfile

    return {p.name for p in Path(tempfile.gettempdir()).glob("loops-sandbox-*")}


def test_a_normal_program_runs_and_its_scratch_dir_is_removed(sandbox) -> None:
    before = sandbox_dirs()
    result = sandbox.run(
        "import os, sys\nprint(sum(range(10)), open('data.txt').read())\n"
        "print(os.environ['HOME'].startswith(os.getcwd()), file=sys.stderr)\n"
        "print(sys.stdin.read())", files={"data.txt": "hello"}, stdin="from stdin", limits=FAST)
    assert result.outcome == "ok" and result.exit_code == 0 and not result.contained
    assert result.stdout.splitlines() == ["45 hello", "from stdin"]
    assert result.stderr.strip() == "True"  # HOME lies inside the scratch directory
    assert sandbox_dirs() == before


def test_a_failing_program_is_an_error_not_a_containment(sandbox) -> None:
    result = sandbox.run("raise ValueError('broken')", limits=FAST)
    assert result.outcome == "error" and result.exit_code == 1 and not result.contained
    assert "ValueError: broken" in result.stderr


def test_an_infinite_loop_ends_at_the_wall_clock_limit(sandbox) -> None:
    started = time.monotonic()
    result = sandbox.run("import time\nwhile True:\n    time.sleep(0.01)", limits=FAST)
    assert result.outcome == "timeout" and result.contained and result.exit_code is None
    assert "2 s wall-clock limit" in result.reason
    assert time.monotonic() - started < FAST.wall_s + 2


def test_a_busy_loop_ends_at_the_cpu_limit(sandbox) -> None:
    result = sandbox.run("while True:\n    pass",
                         limits=SandboxLimits(wall_s=20, cpu_s=1))
    assert result.outcome == "cpu" and "1 s CPU limit" in result.reason
    assert result.wall_s < 10


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie waiting for init is gone in every sense


def test_a_fork_bomb_is_held_at_the_process_limit_and_leaves_nothing(sandbox) -> None:
    result = sandbox.run(
        "import os, time\nprint(os.getpid(), flush=True)\n"
        "while True:\n    try:\n        if os.fork() == 0:\n"
        "            print(os.getpid(), flush=True)\n"
        "    except OSError:\n        time.sleep(0.01)", limits=FAST)
    assert result.outcome == "processes" and result.contained
    assert "limit 4" in result.reason
    pids = [int(line) for line in result.stdout.split()]
    assert 2 <= len(pids) <= 1 + FAST.max_processes
    time.sleep(0.2)
    assert [pid for pid in pids if alive(pid)] == []


def test_a_10_gb_allocation_is_refused_at_the_memory_limit(sandbox) -> None:
    result = sandbox.run("block = bytearray(10 * 1024 ** 3)\nprint('allocated')", limits=FAST)
    assert result.outcome == "memory" and result.contained
    assert "512 MB" in result.reason and "allocated" not in result.stdout


def test_writing_home_stays_in_the_scratch_dir_and_the_real_home_is_refused(
        sandbox, tmp_path: Path) -> None:
    # ~ is the scratch directory's home: writing there is allowed and vanishes with it.
    tilde = sandbox.run("import os\npath = os.path.expanduser('~/.bashrc')\n"
                        "open(path, 'w').write('x')\nprint(path)", limits=FAST)
    assert tilde.outcome == "ok"
    assert not Path(tilde.stdout.strip()).exists()
    # The runner's real home (or any path outside the scratch directory) is refused.
    real = tmp_path / "home" / ".bashrc"
    real.parent.mkdir()
    result = sandbox.run(f"open({str(real)!r}, 'w').write('pwned')", limits=FAST)
    assert result.outcome == "filesystem" and result.contained
    assert str(real) in result.reason
    assert not real.exists()
    removal = sandbox.run(f"import os\nos.remove({str(real.parent)!r})", limits=FAST)
    assert removal.outcome == "filesystem"


def test_opening_a_socket_is_refused(sandbox) -> None:
    result = sandbox.run("import socket\nsocket.create_connection(('127.0.0.1', 22), 1)",
                         limits=FAST)
    assert result.outcome == "network" and result.contained
    assert result.network_isolation in ("namespace", "interpreter")


def test_the_network_namespace_has_no_route_even_without_the_hook(sandbox) -> None:
    """Where namespaces apply, the process has no network at all (checked from /proc,
    which needs no socket): only a loopback interface, and it is down."""
    result = sandbox.run("print(open('/proc/net/dev').read())", limits=FAST)
    if result.network_isolation != "namespace":
        pytest.skip("this kernel does not let the sandbox enter a network namespace")
    interfaces = [line.split(":")[0].strip() for line in result.stdout.splitlines()
                  if ":" in line]
    assert interfaces == ["lo"]


def test_running_programs_and_ctypes_are_refused(sandbox) -> None:
    spawned = sandbox.run("import subprocess\nsubprocess.run(['true'])", limits=FAST)
    assert spawned.outcome == "processes"
    system = sandbox.run("import os\nos.system('true')", limits=FAST)
    assert system.outcome == "processes"
    native = sandbox.run("import ctypes", limits=FAST)
    assert native.outcome == "forbidden"


def test_output_is_cut_at_the_limit(sandbox) -> None:
    limits = SandboxLimits(wall_s=2, cpu_s=1, max_output_bytes=1024, file_size_mb=1)
    result = sandbox.run("import sys\nsys.stdout.write('x' * 5000)", limits=limits)
    assert result.outcome == "ok" and result.stdout.startswith("x" * 1024)
    assert result.stdout.endswith("[... output cut at the sandbox limit]")
    flood = sandbox.run("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)",
                        limits=limits)
    assert flood.outcome == "output" and "1 MB file-size limit" in flood.reason


def test_bad_limits_and_files_are_named() -> None:
    with pytest.raises(ValidationError, match="wall_s"):
        SandboxLimits(wall_s=0)
    with pytest.raises(ValidationError, match="memory_mb"):
        SandboxLimits(memory_mb=10)
    with pytest.raises(ValueError, match="relative path inside the scratch directory"):
        ProcessSandbox().run("pass", files={"../escape.py": ""})
    with pytest.raises(ValueError, match="process, docker"):
        make_sandbox("vm")
