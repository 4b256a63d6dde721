"""Group sampling: one ``sample(num_samples=8)`` vs 8 ``sample(num_samples=1)`` in a row.

An RL step samples a group of completions per prompt. On a real
``loops-runner serve sampler`` (tiny), through the SDK's ``SamplingClient``:

* **ours**: one ``sample`` call with ``num_samples=GROUP`` (the server decodes the
  group as one batch, sharing the prompt's prefill).
* **anchor**: the same ``GROUP`` samples as ``num_samples=1`` calls one after another.

Figures are generated tokens/s (sequences may end early at EOS, so tokens are
counted, not assumed); each round runs both once, order alternating; value =
median of the per-round ratios. Goal: ours >= 3x. Quick: 16 new tokens, not 32.
"""

from __future__ import annotations

import time

from benchmarks.measures._support import interleave, paired, shared_sampler, standalone
from benchmarks.suite import BenchContext, Result

GROUP = 8
PROMPT = list(range(100, 132))


def run(ctx: BenchContext) -> list[Result]:
    from loops_runner.sdk import ModelInput, SamplingClient, SamplingParams

    max_tokens = 16 if ctx.quick else 32
    client = SamplingClient(base_model="tiny", endpoint=shared_sampler(ctx).url)
    try:
        prompt = ModelInput.from_ints(PROMPT)
        seed = 0

        def params() -> SamplingParams:
            # A new seed per call: the same seed would repeat the same completions.
            nonlocal seed
            seed += 1
            return SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=seed)

        def group() -> float:
            start = time.perf_counter()
            response = client.sample(prompt, GROUP, params())
            elapsed = time.perf_counter() - start
            assert len(response.sequences) == GROUP
            return sum(len(s.tokens) for s in response.sequences) / elapsed

        def one_by_one() -> float:
            start = time.perf_counter()
            tokens = 0
            for _ in range(GROUP):
                response = client.sample(prompt, 1, params())
                tokens += sum(len(s.tokens) for s in response.sequences)
            return tokens / (time.perf_counter() - start)

        group()  # first-call costs (connection, allocator) stay out of the rounds
        one_by_one()
        values = interleave(ctx.rounds, {"group": group, "one_by_one": one_by_one})
    finally:
        client.close()
    return [paired("group_sampling", values["group"], values["one_by_one"], unit="tok/s",
                   goal=3.0, direction="at_least",
                   note=f"sample(num_samples={GROUP}) vs {GROUP} num_samples=1 calls in a row, "
                        f"SDK on a real sampler, {max_tokens} max tokens, temperature 1; "
                        "generated tokens/s; value = median per-round ratio")]


if __name__ == "__main__":
    standalone(run)
