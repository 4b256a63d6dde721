"""Start-up: the CLI (``python -m loops_runner`` with a one-step recipe) until its first
``forward_backward`` has returned, cold and warm, next to the bare import of the stack.

* **cold**: a fresh data home (tiny copied in beforehand, untimed), no daemon: the
  run starts the local control plane, which starts a trainer.
* **warm**: the same command again right after, in that home: the daemon and its
  trainer are up and the remembered session is reused.
* **anchor**: ``python -c "import torch, transformers, peft"``, the floor any
  process that trains pays, timed in the same round.

Each round: anchor, cold, warm, then the daemon is stopped. The children may
write bytecode (``PYTHONDONTWRITEBYTECODE`` is dropped), as an installed package
has. Value = ours in seconds (goals: cold <= 15 s, warm <= 3 s); the anchor is
shown for scale.
Quick: one round; full: at most 3 (a cold start costs a process tree).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.measures._support import thread_env
from benchmarks.suite import BenchContext, Result, median

REPO = Path(__file__).resolve().parents[2]
COLD_GOAL_S = 15.0
WARM_GOAL_S = 3.0

# Writes when the first forward_backward has returned, in this process's clock
# (time.time, comparable with the parent's across processes).
PROBE_RECIPE = '''
import time
from pathlib import Path
from loops_runner.sdk import Datum, ModelInput, TensorData

def run(ctx, cfg):
    datum = Datum(model_input=ModelInput.from_ints([1, 2, 3]), loss_fn_inputs={
        "target_tokens": TensorData(data=[2, 3, 4], dtype="int64", shape=[3])})
    ctx.training_client.forward_backward([datum]).result()
    Path("first_forward_backward.txt").write_text(repr(time.time()))
    return {}
'''


def run(ctx: BenchContext) -> list[Result]:
    from loops_runner.models import tiny
    from loops_runner.runner.local_daemon import stop_control_plane

    rounds = 1 if ctx.quick else min(ctx.rounds, 3)
    workdir = ctx.scratch("startup")
    (workdir / "configs" / "recipe").mkdir(parents=True, exist_ok=True)
    (workdir / "probe_recipe.py").write_text(PROBE_RECIPE)
    (workdir / "configs" / "recipe" / "probe.yaml").write_text("_target_: probe_recipe.run\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled",
           **thread_env(ctx.threads)}
    # An installed package has its bytecode; a sandbox that forbids writing it
    # would make every run compile loops_runner's sources again.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    anchor: list[float] = []
    cold: list[float] = []
    warm: list[float] = []
    for _ in range(rounds):
        anchor.append(_timed([sys.executable, "-c", "import torch, transformers, peft"],
                             workdir, env))
        home = Path(tempfile.mkdtemp(prefix="home-", dir=workdir))
        tiny.prepare(home)
        try:
            cold.append(_cli_to_first_step(workdir, home, env))
            warm.append(_cli_to_first_step(workdir, home, env))
        finally:
            stop_control_plane(home)
    note = (f"python -m loops_runner +recipe=probe until its first forward_backward "
            f"returned; anchor = python -c 'import torch, transformers, peft' "
            f"({median(anchor):.1f} s); value = ours in s")
    return [
        Result(measure="startup cold", ours=median(cold), anchor=median(anchor), unit="s",
               value=median(cold), goal=COLD_GOAL_S, direction="at_most",
               rounds=[round(v, 2) for v in cold],
               note=f"fresh home, no daemon: control plane + trainer start; {note}"),
        Result(measure="startup warm", ours=median(warm), anchor=median(anchor), unit="s",
               value=median(warm), goal=WARM_GOAL_S, direction="at_most",
               rounds=[round(v, 2) for v in warm],
               note=f"daemon and trainer up, remembered session reused; {note}"),
    ]


def _timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True, timeout=300)
    return time.perf_counter() - start


def _cli_to_first_step(workdir: Path, home: Path, env: dict[str, str]) -> float:
    marker = workdir / "first_forward_backward.txt"
    marker.unlink(missing_ok=True)
    started = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "loops_runner", "--config-dir", "configs", "+recipe=probe",
         f"hydra.run.dir=out/{time.monotonic_ns()}"],
        cwd=workdir, env={**env, "LOOPS_HOME": str(home)}, capture_output=True, text=True,
        timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"the probe run failed:\n{result.stdout[-2000:]}\n"
                           f"{result.stderr[-3000:]}")
    return float(marker.read_text()) - started


if __name__ == "__main__":
    from benchmarks.measures._support import standalone

    standalone(run)
