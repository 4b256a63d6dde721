"""Startup overhead of the runner: command start -> first forward_backward submitted.

Side by side in one run: cold (no control plane, no trainer yet) and warm (the
local daemon and its trainer are up from the previous run, reused through the
remembered session). Goal for warm: <= 5 s.

    .venv/bin/python benchmarks/runner_startup.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

RECIPE = '''
import time
from pathlib import Path
from loops_runner.sdk import Datum, ModelInput, TensorData

def run(ctx, cfg):
    datum = Datum(model_input=ModelInput.from_ints([1, 2, 3]), loss_fn_inputs={
        "target_tokens": TensorData(data=[2, 3, 4], dtype="int64", shape=[3])})
    Path("first_submit.txt").write_text(repr(time.time()))
    ctx.training_client.forward_backward([datum]).result()
    return {}
'''


def one_run(workdir: Path, home: Path) -> float:
    env = {**os.environ, "LOOPS_HOME": str(home), "PYTHONPATH": str(REPO)}
    started = time.time()
    subprocess.run([sys.executable, "-m", "loops_runner", "--config-dir", "configs",
                    "+recipe=probe", f"hydra.run.dir=out/{started}"],
                   cwd=workdir, env=env, check=True, capture_output=True)
    return float((workdir / "first_submit.txt").read_text()) - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from loops_runner.runner.local_daemon import stop_control_plane

    with tempfile.TemporaryDirectory() as tmp:
        workdir, home = Path(tmp) / "work", Path(tmp) / "home"
        (workdir / "configs" / "recipe").mkdir(parents=True)
        (workdir / "probe_recipe.py").write_text(RECIPE)
        (workdir / "configs" / "recipe" / "probe.yaml").write_text(
            "_target_: probe_recipe.run\n")
        try:
            cold = one_run(workdir, home)
            warm = [one_run(workdir, home) for _ in range(args.repeats)]
        finally:
            stop_control_plane(home)
    print(f"cold start (daemon + trainer + sampler boot): {cold:6.2f} s to first submit")
    print(f"warm start (median of {len(warm)}):              {statistics.median(warm):6.2f} s "
          f"to first submit (goal <= 5 s); all: {', '.join(f'{w:.2f}' for w in warm)}")
    print(f"cold / warm ratio: {cold / statistics.median(warm):.1f}x")


if __name__ == "__main__":
    main()
