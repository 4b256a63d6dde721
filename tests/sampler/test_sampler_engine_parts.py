"""The engine's parts in-process: sampling, detokenization, LoRA, mixed-adapter batches."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from loops_runner.servers.sampler import sampling
from loops_runner.servers.sampler.constraints import ConstraintError, compile_pattern
from loops_runner.servers.sampler.detokenize import IncrementalText, StopStrings
from loops_runner.servers.sampler.lora import AdapterError, LoraAdapter, load_peft_adapter
from tests.sampler import helpers


def _row(seed: int | None, temperature: float = 1.0, top_p: float = 1.0,
         top_k: int = 0) -> sampling.RowSampling:
    generator = None if seed is None else sampling.make_generator(seed, torch.device("cpu"))
    return sampling.RowSampling(temperature, top_p, top_k, generator)


def test_choose_is_greedy_at_temperature_zero() -> None:
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    tokens, _ = sampling.choose(logits, [_row(None, 0.0)] * 4)
    assert tokens.tolist() == logits.argmax(-1).tolist()


def test_a_rows_draw_does_not_depend_on_its_neighbours() -> None:
    logits = torch.randn(6, 300, generator=torch.Generator().manual_seed(1))
    alone = [sampling.choose(logits[i:i + 1], [_row(40 + i)])[0].item() for i in range(6)]
    mixed_rows = [_row(40 + i, top_p=1.0) if i % 2 else _row(40 + i) for i in range(6)]
    together = sampling.choose(logits, mixed_rows)[0].tolist()
    assert together == alone
    # A greedy neighbour draws nothing and changes nothing either.
    rows = [_row(40), _row(None, 0.0), _row(42)]
    picked = sampling.choose(logits[[0, 1, 2]], rows)[0].tolist()
    assert picked[0] == alone[0] and picked[2] == alone[2]


def test_sampling_follows_the_distribution_and_filters() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    counts = torch.zeros(4)
    top_k = torch.zeros(4)
    for seed in range(3000):
        counts[sampling.choose(logits, [_row(seed)])[0].item()] += 1
        top_k[sampling.choose(logits, [_row(seed, top_k=2)])[0].item()] += 1
    assert (counts / counts.sum()).tolist() == pytest.approx([0.5, 0.3, 0.15, 0.05], abs=0.03)
    assert top_k[2:].sum() == 0
    assert (top_k[:2] / top_k.sum()).tolist() == pytest.approx([0.625, 0.375], abs=0.03)
    top_p = [sampling.choose(logits, [_row(seed, top_p=0.7)])[0].item() for seed in range(500)]
    assert set(top_p) == {0, 1}


def test_choice_seeds_are_stable_and_distinct() -> None:
    assert sampling.choice_seed(7, 0) == sampling.choice_seed(7, 0)
    assert len({sampling.choice_seed(7, i) for i in range(8)}) == 8
    assert sampling.choice_seed(None, 0) != sampling.choice_seed(None, 0)


def test_incremental_text_equals_a_full_decode(tokenizer) -> None:
    rng = random.Random(5)
    for _ in range(20):
        tokens = [rng.randrange(3, len(tokenizer)) for _ in range(rng.randrange(1, 40))]
        text = IncrementalText(tokenizer)
        for token in tokens:
            text.push(token)
        full = tokenizer.decode(tokens, skip_special_tokens=True)
        # Text still waiting for the rest of a UTF-8 character is not shown yet.
        assert full.startswith(text.text)
        assert full[len(text.text):].count("\ufffd") == len(full) - len(text.text)


def test_stop_strings_across_token_boundaries(tokenizer) -> None:
    tokens = tokenizer("hello wonderful world of tokens")["input_ids"]
    stops = StopStrings(tokenizer, ("ful wor", "zzz"))
    hit_at = None
    for index, token in enumerate(tokens):
        if stops.push(token):
            hit_at = index
            break
    assert hit_at is not None and stops.matched == "ful wor"
    assert stops.text.text == "hello wonder"
    assert "ful wor" in tokenizer.decode(tokens[: hit_at + 1])
    assert "ful wor" not in tokenizer.decode(tokens[:hit_at])


def test_structured_output_patterns() -> None:
    assert compile_pattern("choice", ["a.b", "c"]) == r"(?:a\.b|c)"
    with pytest.raises(ConstraintError, match="not supported"):
        compile_pattern("json", {"type": "object"})
    with pytest.raises(ConstraintError, match="non-empty"):
        compile_pattern("choice", [])


def test_adapter_loading_refuses_what_it_cannot_serve(tmp_path: Path, tiny_model_dir,
                                                      adapter_factory, reference_model) -> None:
    def load(directory: Path) -> LoraAdapter:
        return load_peft_adapter(directory, reference_model, key="k",
                                 device=torch.device("cpu"), dtype=torch.float32)

    def refused(directory: Path, reason: str) -> None:
        with pytest.raises(AdapterError, match=reason):
            load(directory)

    adapter = adapter_factory(1)
    good = tmp_path / "good"
    adapter.model.save_pretrained(str(good))
    loaded = load(good)
    assert loaded.rank == 4 and len(loaded.modules) == 28

    dora = tmp_path / "dora"
    adapter.model.save_pretrained(str(dora))
    config = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    refused(dora, "DoRA")

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text(json.dumps(config))
    (pickled / "adapter_model.bin").write_bytes(b"not loaded")
    refused(pickled, "safetensors")

    from safetensors.torch import save_file

    wrong = tmp_path / "wrong-shape"
    wrong.mkdir()
    (wrong / "adapter_config.json").write_text(json.dumps(config))
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight":
               torch.zeros(4, 99),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight":
               torch.zeros(128, 4)}, str(wrong / "adapter_model.safetensors"))
    refused(wrong, "do not fit")


def test_one_batch_serves_base_and_two_adapters(tmp_path: Path, tiny_model_dir,
                                                adapter_factory, reference_model) -> None:
    from loops_runner.models.loading import load_base_model
    from loops_runner.servers.sampler.engine import GenerationJob, SamplingSpec
    from loops_runner.servers.sampler.torch_engine import TorchEngine

    first, second = adapter_factory(1), adapter_factory(2)
    for name, adapter in (("a", first), ("b", second)):
        adapter.model.save_pretrained(str(tmp_path / name))
    engine = TorchEngine(load_base_model(str(tiny_model_dir)))
    engine.start()
    try:
        handles = [None, engine.load_adapter(tmp_path / "a", "a"),
                   engine.load_adapter(tmp_path / "b", "b")]
        prompt = [463, 71, 445, 313, 77, 745]
        spec = SamplingSpec(max_tokens=10, temperature=0.0, ignore_eos=True, prompt_logprobs=0)

        async def run() -> list:
            jobs = [GenerationJob(prompt, 2, spec, handle) for handle in handles * 2]
            return await asyncio.gather(*(engine.generate(job) for job in jobs))

        outputs = asyncio.run(run())
        assert engine.stats()["peak_decode_rows"] >= 6  # rows of all three decoded together
    finally:
        engine.shutdown()
    for output, model in zip(outputs, [reference_model, first.model, second.model] * 2,
                             strict=True):
        expected = helpers.greedy(model, prompt, 10)
        assert [s.token_ids for s in output.sequences] == [expected, expected]
        values = [p.logprob for p in output.prompt_logprobs[1:]]
        assert values == pytest.approx(helpers.prompt_logprobs_reference(model, prompt),
                                       abs=1e-4)


async def deliveries(inbox: Any, count: int, start: float) -> list[tuple[float, list[Any]]]:
    """(seconds since ``start``, the items that arrived together), until ``count`` came."""
    loop = asyncio.get_running_loop()
    arrivals: list[tuple[float, list[Any]]] = []
    while sum(len(items) for _, items in arrivals) < count:
        items = [await inbox.get()]
        while not inbox.empty():
            items.append(inbox.get_nowait())
        arrivals.append((loop.time() - start, items))
    return arrivals


def test_mailbox_delivers_first_tokens_at_once_and_paces_the_rest() -> None:
    """Posts from another thread: an urgent one wakes the loop at once; the others
    that follow within the interval arrive together, one interval later."""
    import asyncio
    import threading

    from loops_runner.servers.sampler.openai_stream import Mailbox

    async def scenario() -> list[tuple[float, list[int]]]:
        loop = asyncio.get_running_loop()
        mailbox = Mailbox(loop, interval_s=0.3)
        inbox: asyncio.Queue[int] = asyncio.Queue()
        start = loop.time()

        def engine() -> None:
            mailbox.post(inbox, 0, urgent=True)
            for item in range(1, 4):
                mailbox.post(inbox, item)

        threading.Thread(target=engine).start()
        return await deliveries(inbox, 4, start)

    arrivals = asyncio.run(scenario())
    assert arrivals[0][1][0] == 0 and arrivals[0][0] < 0.3
    assert [item for _, items in arrivals for item in items] == [0, 1, 2, 3]
    # Whatever did not ride with the urgent delivery waited for the interval.
    late = [when for when, items in arrivals if 0 not in items]
    assert all(when >= 0.3 for when in late)


def test_mailbox_keeps_one_timer_when_an_urgent_post_overtakes_it() -> None:
    """An urgent delivery carries the posts a timed one was waiting for; the
    timed one must die with it. If it lived on, it would deliver again before
    the interval and from then on two timers would take turns, halving the
    interval for good (which doubled the events of 32 streams)."""
    import asyncio
    import threading
    import time

    from loops_runner.servers.sampler.openai_stream import Mailbox

    interval = 0.3

    async def scenario() -> list[tuple[float, list[str]]]:
        loop = asyncio.get_running_loop()
        mailbox = Mailbox(loop, interval_s=interval)
        inbox: asyncio.Queue[str] = asyncio.Queue()
        start = loop.time()

        def engine() -> None:
            mailbox.post(inbox, "first", urgent=True)  # delivered at once
            time.sleep(0.05)
            mailbox.post(inbox, "paced")  # a timed delivery, one interval after "first"
            time.sleep(0.05)
            mailbox.post(inbox, "urgent", urgent=True)  # overtakes it, takes "paced" along
            time.sleep(0.05)
            mailbox.post(inbox, "next")  # due one interval after the urgent delivery

        threading.Thread(target=engine).start()
        return await deliveries(inbox, 4, start)

    arrivals = asyncio.run(scenario())
    assert [items for _, items in arrivals] == [["first"], ["paced", "urgent"], ["next"]]
    # 10 ms of slack for the clock's granularity; lateness never fails this.
    assert arrivals[2][0] - arrivals[1][0] >= interval - 0.01


def test_mailbox_stretches_its_pace_to_the_event_budget_of_the_open_streams() -> None:
    """With more streams than interval x budget, deliveries come streams/budget apart."""
    import asyncio
    import threading
    import time

    from loops_runner.servers.sampler.openai_stream import Mailbox

    async def scenario() -> tuple[list[float], list[float]]:
        loop = asyncio.get_running_loop()
        mailbox = Mailbox(loop, interval_s=0.05, events_per_s=20)
        paces = []
        for streams in (0, 1, 4):
            mailbox.open_streams = streams
            paces.append(mailbox.pace())
        inbox: asyncio.Queue[int] = asyncio.Queue()
        start = loop.time()

        def engine() -> None:
            mailbox.post(inbox, 0, urgent=True)
            time.sleep(0.02)  # after the urgent delivery: this one waits for the pace
            mailbox.post(inbox, 1)

        threading.Thread(target=engine).start()
        arrivals = []
        while len(arrivals) < 2:
            await inbox.get()
            arrivals.append(loop.time() - start)
        return paces, arrivals

    paces, arrivals = asyncio.run(scenario())
    assert paces == [0.05, 0.05, 0.2]
    assert arrivals[1] - arrivals[0] >= 0.2 - 0.01
    unbudgeted = Mailbox(asyncio.new_event_loop(), interval_s=0.05, events_per_s=0)
    unbudgeted.open_streams = 100
    assert unbudgeted.pace() == 0.05
