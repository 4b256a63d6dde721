"""Secrets never on a command line: the daemon's API key and the W&B key.

Any local user reads every process's command line (``ps``,
``/proc/<pid>/cmdline``), so the runner's daemon gets its key from a 0600
file and the W&B key stays in the environment (readable by the owner only).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.runner.conftest import private_home, stop_daemon

pytestmark = pytest.mark.skipif(not Path("/proc/self/cmdline").exists(),
                                reason="reads /proc/<pid>/cmdline (Linux)")

WANDB_SECRET = "wandb-key-that-must-stay-private-0123456789"


def _children(pid: int) -> dict[int, int]:
    """pid -> parent pid of every process now running."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The command name may hold spaces or parentheses: split after the last ")".
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
    return parents


def _descendants(root: int) -> list[int]:
    parents = _children(root)
    found, frontier = [root], [root]
    while frontier:
        current = frontier.pop()
        kids = [pid for pid, parent in parents.items() if parent == current]
        found += kids
        frontier += kids
    return found


def _cmdline(pid: int) -> str:
    return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_no_secret_on_any_command_line_of_the_daemon_and_its_servers(
        tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    from loops_runner.models import tiny
    from loops_runner.runner.local_daemon import KEY_FILE, ensure_control_plane, runner_dir
    from loops_runner.sdk import ServiceClient

    monkeypatch.setenv("WANDB_API_KEY", WANDB_SECRET)
    monkeypatch.setenv("WANDB_MODE", "offline")
    with private_home(tmp_path_factory, "secrets_home") as home:
        tiny.prepare(home)
        daemon = ensure_control_plane(home, idle_timeout_s=120)
        try:
            key_file = runner_dir(home) / KEY_FILE
            assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
            assert key_file.read_text().strip() == daemon.api_key
            # A run with its paired sampler: the daemon starts a trainer and a sampler.
            service = ServiceClient(base_url=daemon.url, api_key=daemon.api_key)
            training = service.create_lora_training_client("tiny", rank=4, with_sampler=True)
            try:
                processes = _descendants(daemon.pid)
                commands = {pid: _cmdline(pid) for pid in processes}
                servers = [c for c in commands.values() if " serve " in f" {c} "]
                assert any("control-plane" in c for c in servers), commands
                assert any(" trainer" in c for c in servers), commands
                assert any(" sampler" in c for c in servers), commands
                for pid, command in commands.items():
                    assert daemon.api_key not in command, (pid, command)
                    assert WANDB_SECRET not in command, (pid, command)
                    assert "--api-key=" not in command, (pid, command)
                # The launch log records each command line: no key there either.
                for log in (home / "logs").glob("*.log"):
                    assert daemon.api_key not in log.read_text(errors="replace"), log
            finally:
                training.close()
        finally:
            stop_daemon(home)


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("some-key\n")
    os.chmod(key_file, 0o644)
    result = subprocess.run(
        [sys.executable, "-m", "loops_runner.cli", "serve", "control-plane", "--port", "0",
         "--home", str(tmp_path / "home"), "--api-key-file", str(key_file)],
        capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert f"--api-key-file {key_file}: mode 0644 lets other users read the key" \
        in result.stderr, result.stderr
    assert not (tmp_path / "home" / "control_plane.json").exists()
