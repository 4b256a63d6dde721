"""Sampler test fixtures: a reference model in-process and a paired sampler.

The session ``sampler_server`` (tests/conftest.py) serves the base model and
follows any run named by ``X-Run-Id``; ``paired_sampler`` is a second one
started with ``--run-id`` (so it registers for weight-sync notices and treats
that run as its default) and a short floor hold, so 408 tests stay quick.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.sampler import helpers

FLOOR_WAIT_S = 1.5


@pytest.fixture(scope="session")
def reference_model(tiny_model_dir: Path) -> Any:
    return helpers.shared_base(str(tiny_model_dir))


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir: Path) -> Any:
    return helpers.tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="session")
def adapter_factory(tiny_model_dir: Path):  # -> Callable[[int], helpers.Adapter]
    cache: dict[int, helpers.Adapter] = {}

    def make(seed: int) -> helpers.Adapter:
        if seed not in cache:
            cache[seed] = helpers.make_adapter(tiny_model_dir, seed)
        return cache[seed]

    return make


@pytest.fixture(scope="session")
def paired_run() -> str:
    return f"paired-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def paired_sampler(loops_home: Path, tiny_model_dir: Path, paired_run: str) -> Iterator[Any]:
    from tests.servers import start_server

    server = start_server(["sampler", "--base-model", "tiny", "--run-id", paired_run,
                           "--floor-wait", str(FLOOR_WAIT_S)], loops_home,
                          "sampler-paired-test.log")
    yield server
    server.stop()
