"""The bit-for-bit rebuild of the shipped ``tiny``, run beside the rest of the suite.

Rebuilding is the whole pretraining (~7 minutes of two cores here), and the rest
of the suite leaves about one core idle on average (it mostly waits on servers
and subprocesses). So the root conftest starts the rebuild as soon as pytest
has collected the test, at the lowest CPU priority so that it only takes cycles nobody else
wants, and the test that compares the bytes runs last and waits for it.
Priority changes nothing in the bytes: the build pins its thread count and seeds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REBUILD_TEST = "test_pretraining_script_reproduces_the_shipped_model_bit_for_bit"
# Environment settings the build must be immune to (it sets its own threads and seeds).
# OMP_WAIT_POLICY=PASSIVE keeps a preempted build thread's partner from spinning
# on cycles the rest of the suite could use; it does not change any result.
FOREIGN_ENV = {"PYTHONHASHSEED": "7", "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def libraries_match() -> bool:
    """Whether this environment has the library versions the shipped tiny was built with."""
    from loops_runner.models import tiny

    return tiny.build_libraries() == tiny.build_info(tiny.SHIPPED_DIR)["libraries"]


def _lowest_priority_child() -> None:
    """In the child before exec: nice 19, and (Linux) die with the test process, so a
    killed pytest leaves no build running."""
    os.nice(19)
    if sys.platform == "linux":
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


class BackgroundRebuild:
    """``scripts/pretrain_tiny.py --out <tmp>/tiny`` in a child process at nice 19."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="tiny-rebuild-"))
        self.out = self.workdir / "tiny"
        self.log = self.workdir / "build.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(REPO / "scripts" / "pretrain_tiny.py"), "--out",
                 str(self.out)],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **FOREIGN_ENV},
                preexec_fn=_lowest_priority_child)

    def wait(self, timeout: float) -> Path:
        """The rebuilt folder, once the build has ended well (raises with its log if not)."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.cancel()
            raise AssertionError(f"the tiny rebuild took over {timeout:.0f} s") from None
        if code != 0:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise AssertionError(f"scripts/pretrain_tiny.py exited with {code}:\n{tail}")
        return self.out

    def cancel(self) -> None:
        """Stop the build if it still runs and remove its files."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)
