"""Peak memory of a trainer process vs a bare PEFT loop, same model, batch and steps.

* **ours**: a fresh ``loops-runner serve trainer`` driven through the SDK for
  ``steps`` of ``forward_backward`` + ``optim_step``; then its peak resident
  set (``VmHWM`` of ``/proc/<pid>/status``).
* **anchor**: ``_trainer.PeftLoop`` in its own fresh Python process
  (``python -m benchmarks.measures.memory --anchor ...``), the same steps,
  the same figure.

Both processes start together (peak RSS is per process, so overlapping them
changes nothing but the wall time). One round (one fresh pair): peak RSS
barely moves between rounds, and each costs two process starts. Goal:
ours / anchor <= 1.2.

Full run: the ~40M Qwen3 (whose weights, not the imports, then dominate the
figure) on a fresh trainer. Quick run: tiny, on the benchmark's shared tiny
trainer (a trainer start costs ~30 s on a busy 2-core machine); that process
has also served the other measures' runs, which can only raise its peak, so
a pass there is conservative.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.measures._trainer import (
    LEARNING_RATE,
    RANK,
    PeftLoop,
    datums,
    peak_rss_mib,
    sequences,
    shared_trainer,
    start_trainer,
)
from benchmarks.suite import BenchContext, Result, median

GOAL = 1.2
REPO_ROOT = Path(__file__).resolve().parents[2]
ANCHOR_TIMEOUT_S = 600.0


def run(ctx: BenchContext) -> list[Result]:
    from loops_runner.models import tiny

    if ctx.quick:
        label, model_path, base_model = "tiny", str(tiny.prepare(ctx.home)), "tiny"
        rows, length, steps, rounds = 8, 128, 3, 1
    else:
        from benchmarks.measures._models import prepare_qwen3_40m

        model_path = str(prepare_qwen3_40m(ctx.home))
        label, base_model = "qwen3-40m", model_path
        rows, length, steps, rounds = 4, 128, 3, 1
    ours, anchor = [], []
    for n in range(rounds):
        o, a = one_round(ctx.home, base_model, model_path, rows, length, steps, n,
                         shared=ctx.quick)
        ours.append(o)
        anchor.append(a)
    ratios = [o / a for o, a in zip(ours, anchor, strict=True)]
    return [Result(
        measure=f"memory[{label}]", ours=median(ours), anchor=median(anchor), unit="MiB",
        value=median(ratios), goal=GOAL, direction="at_most", rounds=[round(r, 3) for r in ratios],
        note=f"peak RSS after {steps} steps of {rows}x{length} tokens: trainer process"
             f"{' (shared with the other measures)' if ctx.quick else ''} vs bare PEFT loop "
             "process; value = ours/anchor")]


def one_round(home: Path, base_model: str, model_path: str, rows: int, length: int, steps: int,
              index: int, *, shared: bool) -> tuple[float, float]:
    from loops_runner.sdk.training_client import TrainingClient
    from loops_runner.wire import AdamParams

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    anchor_process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.measures.memory", "--anchor", model_path,
         "--rows", str(rows), "--length", str(length), "--steps", str(steps)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO_ROOT)
    try:
        server = shared_trainer(home, base_model) if shared \
            else start_trainer(home, base_model, f"bench-memory-{index}.log")
        try:
            client = TrainingClient(server.url, lora_rank=RANK, base_model=base_model,
                                    run_id=f"memory-{index}", heartbeat_interval=3600.0)
            data = datums(sequences(rows, length))
            adam = AdamParams(learning_rate=LEARNING_RATE)
            for _ in range(steps):
                fb, opt = client.forward_backward(data), client.optim_step(adam)
                fb.result()
                opt.result()
            client.close()
            ours = peak_rss_mib(server.pid)
        finally:
            if not shared:
                server.stop()
        out, err = anchor_process.communicate(timeout=ANCHOR_TIMEOUT_S)
    finally:
        if anchor_process.poll() is None:
            anchor_process.kill()
            anchor_process.wait()
    if anchor_process.returncode != 0:
        raise RuntimeError(f"the PEFT anchor process failed:\n{err.decode()[-2000:]}")
    return ours, float(json.loads(out.decode().strip().splitlines()[-1])["peak_rss_mib"])


def anchor_main(argv: list[str]) -> None:
    """The anchor process: load, train ``steps`` steps, print the peak RSS as JSON."""
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--anchor", required=True, help="model directory")
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--length", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    args = parser.parse_args(argv)
    loop = PeftLoop(args.anchor)
    batch = torch.tensor(sequences(args.rows, args.length))
    for _ in range(args.steps):
        loop.step(batch)
    print(json.dumps({"peak_rss_mib": peak_rss_mib()}))


if __name__ == "__main__":
    anchor_main(sys.argv[1:])
