"""Weight sync: a trainer's publish until its paired sampler serves the new weights,
vs a raw PEFT save + load of the same adapter.

* **ours**: the benchmark's shared tiny trainer and shared base-model sampler
  (real ``loops-runner serve`` processes), the sampler registered as this run's
  paired sampler in the home (``storage.weight_sync``, what the control plane
  does when it creates one; the control plane is not on the publish path). Per
  round, after an untimed ``forward_backward`` + ``optim_step`` (new weights,
  like a training step), ``save_weights_and_get_sampling_client`` is timed: the
  trainer writes the adapter (LoRA rank ``RANK``) atomically with its manifest,
  bumps LIVE.json, notifies the sampler, which loads and swaps it, and the
  client returns once the sampler serves that version.
* **anchor**: in this process, ``save_pretrained`` of a PEFT model holding the
  adapter the trainer published into a fresh folder, then its safetensors read
  back and set into a second PEFT model (``set_peft_model_state_dict``): the
  least any publish has to do.

Each round times ``PER_ROUND`` publishes and as many raw save + loads (one
publish of tiny's adapter is 20-40 ms, the size of one scheduling hiccup on a
shared 2-core machine: with one publish a round the full run's median came out
at 2.12x once and 1.03x in the quick run); rounds alternate which side goes
first; value = median of per-round ours/anchor.
Goal: <= 1.5x. Quick: the rounds of the context, at most 5.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path

from benchmarks.measures._support import interleave, paired, shared_sampler, standalone
from benchmarks.measures._trainer import shared_trainer
from benchmarks.suite import BenchContext, Result

RANK = 32
PER_ROUND = 5
PUBLISH_NAME = "bench-live"


def run(ctx: BenchContext) -> list[Result]:
    from loops_runner.sdk import AdamParams, Datum, ModelInput, TensorData
    from loops_runner.sdk.training_client import TrainingClient
    from loops_runner.storage import layout, weight_sync

    rounds = min(ctx.rounds, 5) if ctx.quick else ctx.rounds
    run_id = f"weight-sync-{uuid.uuid4().hex[:8]}"
    sampler = shared_sampler(ctx)
    weight_sync.register_paired_sampler(ctx.home, run_id, sampler.url)
    training = TrainingClient(shared_trainer(ctx.home, "tiny").url, lora_rank=RANK,
                              base_model="tiny", run_id=run_id, heartbeat_interval=3600.0,
                              paired_sampling_deployment=sampler.url)
    try:
        datum = Datum(model_input=ModelInput.from_ints(list(range(20, 52))), loss_fn_inputs={
            "target_tokens": TensorData(data=list(range(21, 53)), dtype="int64", shape=[32])})

        def train_step() -> None:
            training.forward_backward([datum]).result()
            training.optim_step(AdamParams(learning_rate=1e-2)).result()

        def publish_once() -> float:
            train_step()
            start = time.perf_counter()
            training.save_weights_and_get_sampling_client(PUBLISH_NAME)
            return time.perf_counter() - start

        def publish() -> float:
            return sum(publish_once() for _ in range(PER_ROUND)) / PER_ROUND

        publish_once()  # warms both ends (first adapter load, connections)
        published = layout.checkpoint_dir(ctx.home, run_id, "sampler_weights", PUBLISH_NAME)
        raw_once = _raw_save_load(ctx, published)
        raw_once()

        def raw() -> float:
            return sum(raw_once() for _ in range(PER_ROUND)) / PER_ROUND

        values = interleave(rounds, {"publish": publish, "raw": raw})
        size = (published / "adapter_model.safetensors").stat().st_size
    finally:
        training.close()
    return [paired("weight_sync", values["publish"], values["raw"], unit="s", goal=1.5,
                   direction="at_most",
                   note=f"save_weights_and_get_sampling_client (trainer -> paired sampler "
                        f"serving it) vs PEFT save_pretrained + load into a model of the "
                        f"same rank-{RANK} adapter ({size / 1e6:.2f} MB), mean of {PER_ROUND} "
                        "of each per round; value = median per-round ours/anchor (lower is "
                        "better)")]


def _raw_save_load(ctx: BenchContext, published: Path):  # -> Callable[[], float]
    """The anchor: save the published adapter from a PEFT model, load it into another."""
    import torch
    from peft import PeftModel, set_peft_model_state_dict
    from safetensors.torch import load_file

    from loops_runner.models.loading import load_base_model

    source = PeftModel.from_pretrained(load_base_model("tiny", home=ctx.home,
                                                       device="cpu").model, str(published))
    target = PeftModel.from_pretrained(load_base_model("tiny", home=ctx.home,
                                                       device="cpu").model, str(published))
    scratch = Path(tempfile.mkdtemp(prefix="raw-adapter-", dir=ctx.scratch("weight_sync")))

    def raw() -> float:
        folder = scratch / f"raw-{time.monotonic_ns()}"
        start = time.perf_counter()
        source.save_pretrained(str(folder))
        with torch.no_grad():
            set_peft_model_state_dict(target, load_file(str(folder / "adapter_model.safetensors")))
        return time.perf_counter() - start

    return raw


if __name__ == "__main__":
    standalone(run)
