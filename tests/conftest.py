"""Shared fixtures: one data home, one tiny model and shared servers per test session.

Starting a server costs ~10 s (torch, transformers, peft imports), so servers
are session-scoped; tests keep their own state apart with fresh run ids.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# Offline everything: no hub, W&B offline. Set before any test imports them.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Tests press Ctrl-C (send SIGINT) on the CLIs they start. A shell without job control
# that runs the suite in the background (`bash .ci/run &` in a script) starts it with
# SIGINT ignored, and an ignored signal stays ignored in every child it execs, so those
# CLIs would never see the Ctrl-C. A handled signal is reset to the default on exec, so
# handling it here gives every child a terminal's Ctrl-C whoever started the suite.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def loops_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private data home for the whole session (also exported as LOOPS_HOME)."""
    home = tmp_path_factory.mktemp("loops_home")
    previous = os.environ.get("LOOPS_HOME")
    os.environ["LOOPS_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("LOOPS_HOME", None)
    else:
        os.environ["LOOPS_HOME"] = previous


@pytest.fixture(scope="session")
def tiny_model_dir(loops_home: Path) -> Path:
    from loops_runner.models import tiny

    return tiny.prepare(loops_home)


@pytest.fixture
def run_id() -> str:
    """A fresh run id per test, so tests sharing a server never share state."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def trainer_server(loops_home: Path, tiny_model_dir: Path):  # -> ServerProcess
    """One real trainer (``loops-runner serve trainer --base-model tiny``) per session."""
    from tests.servers import start_server

    server = start_server(["trainer", "--base-model", "tiny"], loops_home, "trainer-test.log",
                          health_path="/health?base_model=tiny")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sampler_server(loops_home: Path, tiny_model_dir: Path):  # -> ServerProcess
    """One real sampler (base model; follows runs named by X-Run-Id) per session."""
    from tests.servers import start_server

    server = start_server(["sampler", "--base-model", "tiny"], loops_home, "sampler-test.log")
    yield server
    server.stop()
