"""Deterministic run-dir names: the same command always maps to the same folder.

That is what makes "re-run the killed command" resume it. Names come from the
command-line overrides, made safe for a file system and bounded in length.
A running job holds its run dir, so that two processes never write one.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout
from omegaconf import OmegaConf

from loops_runner.runner.config import ConfigError

MAX_NAME = 120
RESOLVER = "loops_run_dirname"
CLAIM_FILE = ".run.lock"


def run_dirname(override_dirname: str) -> str:
    if not override_dirname:
        return "default"
    safe = re.sub(r"[^A-Za-z0-9._=,+-]", "_", override_dirname)
    if len(safe) <= MAX_NAME:
        return safe
    digest = hashlib.sha256(override_dirname.encode()).hexdigest()[:12]
    return f"{safe[: MAX_NAME - 13]}-{digest}"


def register() -> None:
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, run_dirname)


@contextmanager
def claim_run_dir(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir`` for this job, or refuse at once if another process holds it.

    Two jobs of a parallel sweep with the same overrides, or a re-run while the
    killed command's job still runs, would otherwise interleave checkpoints and
    metrics in one folder. The OS drops the lock when its holder dies, so a
    killed run never blocks its own resume.
    """
    lock = FileLock(str(run_dir / CLAIM_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ConfigError(
            f"the run dir {run_dir} is in use by another process (a sweep job with the same "
            "overrides, or an earlier command that is still running). Wait for it to end, or "
            "choose another run dir (hydra.run.dir=... or hydra.sweep.dir=...)."
        ) from None
    try:
        yield
    finally:
        lock.release()
