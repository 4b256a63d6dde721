"""Publish-to-served latency of the paired sampler vs a raw adapter save + load.

A real paired sampler (``serve sampler --run-id``) and a PEFT LoRA adapter on
the same base model in this process, side by side, per round:

* **raw save + load**: ``save_pretrained`` to a fresh folder, then read the
  safetensors back onto the device: the least any publish has to do.
* **publish (notify)**: what the trainer does: save the folder atomically with
  its manifest, ``write_live``, ``POST /internal/live`` (the sampler answers after
  the swap); then the first ``/sample`` at the new version floor returns.
* **publish (poll only)**: the same without the notice: until the sampler's own
  LIVE.json watcher (0.2 s interval) has swapped, seen through
  ``GET /trainers_policy_version``.

Rounds alternate; medians give the headline ratio. Goal: publish (notify) <= 2x raw.

    .venv/bin/python benchmarks/sampler_publish_latency.py [--rank 32] [--rounds 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

RUN = "bench-publish"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-model", default="tiny")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--home", default=None, help="data home (default: a temporary one)")
    args = parser.parse_args()

    import httpx
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file

    from loops_runner.models.loading import load_base_model
    from loops_runner.servers.launch import spawn_server
    from loops_runner.storage import layout, weight_sync

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.sampler.helpers import Adapter

    home = Path(args.home or tempfile.mkdtemp(prefix="loops-bench-"))
    print(f"starting a paired sampler for {args.base_model} (data home {home}) ...", flush=True)
    server = spawn_server(["sampler", "--base-model", args.base_model, "--home", str(home),
                           "--run-id", RUN], home / "logs" / "bench-paired-sampler.log")
    try:
        url = server.url
        deadline = time.monotonic() + 30
        while weight_sync.paired_sampler_url(home, RUN) != url:  # registered once listening
            assert time.monotonic() < deadline, "the sampler never registered"
            time.sleep(0.05)
        loaded = load_base_model(args.base_model, home=home, device="cpu")
        torch.set_num_threads(1)
        peft_model = get_peft_model(loaded.model, LoraConfig(
            r=args.rank, lora_alpha=2 * args.rank, target_modules="all-linear"))
        adapter = Adapter(peft_model, seed=0, rank=args.rank)
        scratch = Path(tempfile.mkdtemp(prefix="raw-adapter-", dir=home))
        prompt = {"prompt": [11, 12, 13, 14], "n": 1, "max_tokens": 1, "temperature": 0.0,
                  "logprobs": 0, "return_tokens_as_token_ids": True}
        client = httpx.Client(timeout=60)
        version = 0

        def perturb() -> None:
            with torch.no_grad():  # new weights for every publish, like a training step
                for name, parameter in peft_model.named_parameters():
                    if "lora_B" in name:
                        parameter.add_(torch.randn_like(parameter) * 0.01)

        def raw() -> float:
            target = scratch / f"raw-{time.monotonic_ns()}"
            start = time.perf_counter()
            peft_model.save_pretrained(str(target))
            load_file(str(target / "adapter_model.safetensors"), device=str(loaded.device))
            return time.perf_counter() - start

        def publish_notify() -> tuple[float, float]:
            nonlocal version
            version += 1
            start = time.perf_counter()
            adapter.save(home, RUN, "live", step=version)
            weight_sync.write_live(home, RUN, version, "live")
            ack = client.post(f"{url}/internal/live",
                              json={"run_id": RUN, "version": version, "name": "live"})
            acknowledged = time.perf_counter() - start
            assert ack.json()["live"] == version, ack.text
            served = client.post(f"{url}/sample", json=prompt,
                                 headers={"X-Min-Policy-Version": str(version)})
            assert served.headers["x-trainers-policy-version"] == str(version)
            return acknowledged, time.perf_counter() - start

        def publish_poll() -> float:
            nonlocal version
            version += 1
            start = time.perf_counter()
            adapter.save(home, RUN, "live", step=version)
            weight_sync.write_live(home, RUN, version, "live")
            while client.get(f"{url}/trainers_policy_version").json()["policy_version"] \
                    != version:
                time.sleep(0.005)
            return time.perf_counter() - start

        perturb()
        raw()
        publish_notify()
        times: dict[str, list[float]] = {"raw": [], "ack": [], "served": [], "poll": []}
        for _ in range(args.rounds):
            perturb()
            times["raw"].append(raw())
            ack, served = publish_notify()
            times["ack"].append(ack)
            times["served"].append(served)
            perturb()
            times["poll"].append(publish_poll())
        size = (layout.checkpoint_dir(home, RUN, "sampler_weights", "live")
                / "adapter_model.safetensors").stat().st_size
    finally:
        server.stop()

    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"\nmodel {args.base_model}, LoRA rank {args.rank} on all linear layers "
          f"({size / 1e6:.2f} MB safetensors), {args.rounds} rounds, medians (best):")
    rows = [("raw save + load", "raw"),
            ("publish, acknowledged (notify)", "ack"),
            ("publish, first sample served", "served"),
            ("publish, poll only (no notify)", "poll")]
    for label, key in rows:
        print(f"  {label:34}{median[key] * 1000:8.1f} ms ({min(times[key]) * 1000:.1f})   "
              f"{median[key] / median['raw']:5.2f}x raw")
    print(f"\npublish-to-served (notify, acknowledged) / raw save+load: "
          f"{median['ack'] / median['raw']:.2f}x (goal <= 2x)")


if __name__ == "__main__":
    main()
