"""Many runs of one base model: memory and start-up when they share a trainer (issue #17).

Per round, in a fresh data home (so the first client really starts a
process): a local control plane (default ``--runs-per-trainer`` 8), one
training client (create + one forward_backward/optim_step), the resident
memory of its trainer process(es); then seven more clients of the same base
model, each timed from create to ready, and the memory of all trainer (and
paired sampler, if any) processes again.

Results: the memory ratio 8 clients / 1 client (goal <= 1.5; one process per
run would be ~8), and the start-up seconds of clients 2-8 (median and max,
goal <= 1 s each; the anchor is the first client's start-up, which pays for
the process).

    PYTHONPATH=. python -m benchmarks.measures.many_runs [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks.suite import BenchContext, Result, median

CLIENTS = 8
GOAL_MEMORY_RATIO = 1.5
GOAL_STARTUP_S = 1.0


@dataclass
class Round:
    first_startup_s: float
    later_startup_s: list[float]
    one_client_mb: float
    all_clients_mb: float
    processes: int


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` in MB (psutil when installed, else /proc)."""
    try:
        import psutil
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
        raise RuntimeError(f"no VmRSS for pid {pid}") from None
    return float(psutil.Process(pid).memory_info().rss) / (1024.0 * 1024.0)


def server_memory_mb(url: str) -> tuple[float, int]:
    """Total RSS of the live trainer and sampler processes the control plane runs."""
    deployments = httpx.get(f"{url}/v1/loops/deployments", timeout=30).json()["deployments"]
    pids = [d["pid"] for d in deployments
            if d["pid"] and d["status"]["name"] in {"RUNNING", "ACTIVE", "DEPLOYING"}]
    return sum(rss_mb(pid) for pid in pids), len(pids)


def fresh_home(ctx: BenchContext, index: int) -> Path:
    """A new data home with the already built tiny model copied in (building costs ~8 s)."""
    from loops_runner.models import tiny

    source = tiny.prepare(ctx.home)
    home = ctx.scratch(f"many_runs/round-{index}")
    target = home / "models" / source.name
    if not target.exists():
        shutil.copytree(source, target)
    return home


def one_step(client: object) -> None:
    """A forward_backward and an optim_step, so the run's tensors exist."""
    from loops_runner.sdk import AdamParams, Datum, ModelInput, TensorData

    datum = Datum(model_input=ModelInput.from_ints([11, 42, 7, 99, 23, 5, 64, 18]),
                  loss_fn_inputs={"target_tokens": TensorData(
                      data=[42, 7, 99, 23, 5, 64, 18, 31], dtype="int64", shape=[8])})
    client.forward_backward([datum], "cross_entropy").result()  # type: ignore[attr-defined]
    client.optim_step(AdamParams(learning_rate=1e-3)).result()  # type: ignore[attr-defined]


def measure_round(ctx: BenchContext, index: int) -> Round:
    from loops_runner.sdk import ServiceClient
    from loops_runner.servers.launch import spawn_server

    home = fresh_home(ctx, index)
    env = {"LOOPS_HOME": str(home)}
    if ctx.threads:
        env |= {"OMP_NUM_THREADS": str(ctx.threads), "LOOPS_SAMPLER_THREADS": str(ctx.threads)}
    server = spawn_server(["control-plane", "--home", str(home), "--port", "0"],
                          home / "logs" / "control-plane-bench.log", env=env,
                          start_timeout=120)
    clients = []
    try:
        service = ServiceClient(base_url=server.url)
        started = time.perf_counter()
        clients.append(service.create_lora_training_client("tiny", rank=8))
        first = time.perf_counter() - started
        one_step(clients[0])
        one_mb, _ = server_memory_mb(server.url)
        later = []
        for _ in range(CLIENTS - 1):
            started = time.perf_counter()
            clients.append(service.create_lora_training_client("tiny", rank=8))
            later.append(time.perf_counter() - started)
            one_step(clients[-1])
        all_mb, processes = server_memory_mb(server.url)
        return Round(first, later, one_mb, all_mb, processes)
    finally:
        for client in clients:
            client.close()
        server.stop(timeout=60.0)


def run(ctx: BenchContext) -> list[Result]:
    rounds = [measure_round(ctx, index) for index in range(1 if ctx.quick else ctx.rounds)]
    ratios = [r.all_clients_mb / r.one_client_mb for r in rounds]
    medians = [median(r.later_startup_s) for r in rounds]
    maxima = [max(r.later_startup_s) for r in rounds]
    first = median([r.first_startup_s for r in rounds])
    processes = max(r.processes for r in rounds)
    return [
        Result(measure="many_runs: server memory, 8 clients / 1 client (same base model)",
               ours=median([r.all_clients_mb for r in rounds]),
               anchor=median([r.one_client_mb for r in rounds]), unit="MB",
               value=median(ratios), goal=GOAL_MEMORY_RATIO, direction="at_most",
               rounds=ratios,
               note=f"RSS of trainer + paired sampler processes; {processes} process(es) "
                    f"for {CLIENTS} clients"),
        Result(measure="many_runs: start-up of clients 2-8, median",
               ours=median(medians), anchor=first, unit="s", value=median(medians),
               goal=GOAL_STARTUP_S, direction="at_most", rounds=medians,
               note="create_lora_training_client until ready; anchor = client 1, which "
                    "starts the trainer process"),
        Result(measure="many_runs: start-up of clients 2-8, max",
               ours=median(maxima), anchor=first, unit="s", value=median(maxima),
               goal=GOAL_STARTUP_S, direction="at_most", rounds=maxima,
               note="the slowest of clients 2-8 per round (median over rounds)"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from loops_runner.home import loops_home

    with tempfile.TemporaryDirectory(prefix="many-runs-") as tmp:
        # The user's data home, where tiny is usually built already (it is
        # copied from there into each round's fresh home).
        home = loops_home(None)
        ctx = BenchContext(quick=args.quick, home=home, work=Path(tmp) / "work",
                           rounds=args.rounds, threads=args.threads)
        for result in run(ctx):
            verdict = {True: "ok", False: "MISSED", None: "-"}[result.passed]
            anchor = "-" if result.anchor is None else f"{result.anchor:.2f}"
            print(f"{result.measure}: {result.value:.2f} (goal {result.direction} "
                  f"{result.goal}) [{verdict}]; ours {result.ours:.2f} {result.unit}, "
                  f"anchor {anchor} {result.unit}; rounds "
                  f"{', '.join(f'{v:.2f}' for v in result.rounds)}; {result.note}")


if __name__ == "__main__":
    main()
