"""Which weights serve a request (spec 6.2), weight sync (7.5) and adapter listing (6.5).

Adapters are made with PEFT and published the way the trainer does it
(helpers.Adapter.save + helpers.publish). Each test uses its own run id.
"""

from __future__ import annotations

import time

import httpx
import pytest

from loops_runner.storage import weight_sync
from loops_runner.wire.paths import bt_path
from tests.sampler import helpers
from tests.sampler.conftest import FLOOR_WAIT_S
from tests.sampler.helpers import sample, tokens_of

PROMPT = [463, 71, 445, 313, 77, 745, 753, 622, 85, 12, 1001]
GREEDY = {"prompt": PROMPT, "max_tokens": 12, "temperature": 0.0, "ignore_eos": True,
          "prompt_logprobs": 0}


def _prompt_logprobs(response: httpx.Response) -> list[float]:
    entries = response.json()["choices"][0]["prompt_logprobs"]
    return [entry[str(token)]["logprob"] for entry, token in zip(entries[1:], PROMPT[1:],
                                                                  strict=True)]


def _assert_serves(response: httpx.Response, model, version: int) -> None:
    """The response came from ``model`` (PEFT reference or base) at ``version``."""
    assert response.status_code == 200, response.text
    assert response.headers["x-trainers-policy-version"] == str(version)
    assert _prompt_logprobs(response) == pytest.approx(
        helpers.prompt_logprobs_reference(model, PROMPT), abs=1e-4)
    assert tokens_of(response) == helpers.greedy(model, PROMPT, 12)


def test_pinned_checkpoint_serves_that_adapter(sampler_server, loops_home, run_id,
                                               adapter_factory, reference_model) -> None:
    adapter = adapter_factory(1)
    adapter.save(loops_home, run_id, "step-3", step=3)
    path = bt_path(run_id, "sampler_weights", "step-3")
    pinned = sample(sampler_server.url, GREEDY, headers={"X-Checkpoint-Path": path})
    _assert_serves(pinned, adapter.model, 3)
    assert pinned.json()["model"] == path
    base = sample(sampler_server.url, GREEDY)
    _assert_serves(base, reference_model, 0)
    assert tokens_of(base) != tokens_of(pinned)
    # A trailing slash names the same checkpoint (trainer paths may carry one).
    again = sample(sampler_server.url, GREEDY, headers={"X-Checkpoint-Path": path + "/"})
    assert tokens_of(again) == tokens_of(pinned)
    listed = {m["id"]: m["parent"] for m in
              httpx.get(f"{sampler_server.url}/v1/models").json()["data"]}
    assert listed[path] == "tiny"


def test_overwritten_checkpoint_is_reloaded(sampler_server, loops_home, run_id,
                                            adapter_factory) -> None:
    path = bt_path(run_id, "sampler_weights", "latest")
    adapter_factory(2).save(loops_home, run_id, "latest", step=1)
    first = sample(sampler_server.url, GREEDY, headers={"X-Checkpoint-Path": path})
    _assert_serves(first, adapter_factory(2).model, 1)
    adapter_factory(3).save(loops_home, run_id, "latest", step=2)
    second = sample(sampler_server.url, GREEDY, headers={"X-Checkpoint-Path": path})
    _assert_serves(second, adapter_factory(3).model, 2)


@pytest.mark.parametrize(("path", "words"), [
    ("bt://loops:{run}/sampler_weights/never-saved", ("unknown checkpoint",)),
    ("bt://loops:{run}/weights/state-1", ("sampler_weights",)),
    ("bt://loops:{run}/sampler_weights/../x", ("not of the form",)),
    ("file:///etc", ("bt://",)),
    ("/tmp", ("bt://",)),
])
def test_unusable_checkpoints_are_400_never_404(sampler_server, run_id, path: str,
                                                words: tuple[str, ...]) -> None:
    response = sample(sampler_server.url, GREEDY,
                      headers={"X-Checkpoint-Path": path.format(run=run_id)})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "BadRequestError"
    assert all(word in error["message"] for word in words), error["message"]


def test_checkpoint_of_another_base_model_is_refused(sampler_server, loops_home, run_id,
                                                     adapter_factory) -> None:
    adapter_factory(1).save(loops_home, run_id, "foreign", base_model_id="Qwen/Qwen3-8B")
    response = sample(sampler_server.url, GREEDY, headers={
        "X-Checkpoint-Path": bt_path(run_id, "sampler_weights", "foreign")})
    assert response.status_code == 400
    assert "Qwen/Qwen3-8B" in response.json()["error"]["message"]


def test_floor_behind_live_is_408_after_the_hold(paired_sampler, run_id) -> None:
    started = time.monotonic()
    response = sample(paired_sampler.url, GREEDY,
                      headers={"X-Run-Id": run_id, "X-Min-Policy-Version": "1"})
    waited = time.monotonic() - started
    assert response.status_code == 408
    assert "behind" in response.json()["detail"]
    assert waited >= FLOOR_WAIT_S * 0.9


def test_floor_is_met_by_a_publish_during_the_hold(paired_sampler, loops_home, run_id,
                                                   adapter_factory) -> None:
    import threading

    adapter = adapter_factory(4)
    result: dict[str, httpx.Response] = {}

    def request() -> None:
        result["response"] = sample(paired_sampler.url, GREEDY, headers={
            "X-Run-Id": run_id, "X-Min-Policy-Version": "5"})

    thread = threading.Thread(target=request)
    thread.start()
    time.sleep(0.4)
    adapter.save(loops_home, run_id, "v5", step=5)
    # No notify: this sampler is not the run's registered paired sampler, so
    # it must notice LIVE.json by itself while holding the request.
    weight_sync.write_live(loops_home, run_id, 5, "v5")
    thread.join(30)
    _assert_serves(result["response"], adapter.model, 5)


def test_floor_and_checkpoint_serve_the_checkpoint_until_live_catches_up(
        paired_sampler, loops_home, run_id, adapter_factory) -> None:
    pinned, live = adapter_factory(1), adapter_factory(2)
    pinned.save(loops_home, run_id, "ckpt", step=2)
    headers = {"X-Run-Id": run_id, "X-Min-Policy-Version": "3",
               "X-Checkpoint-Path": bt_path(run_id, "sampler_weights", "ckpt")}
    started = time.monotonic()
    behind = sample(paired_sampler.url, GREEDY, headers=headers)
    assert time.monotonic() - started < FLOOR_WAIT_S  # served at once, never held or 408
    _assert_serves(behind, pinned.model, 2)
    live.save(loops_home, run_id, "live-3", step=3)
    response = helpers.publish(loops_home, run_id, 3, "live-3", sampler_url=paired_sampler.url)
    assert response is not None and response.json() == {"run_id": run_id, "live": 3}
    _assert_serves(sample(paired_sampler.url, GREEDY, headers=headers), live.model, 3)


def test_live_adapter_follows_publishes_and_drops(paired_sampler, loops_home, run_id,
                                                  adapter_factory, reference_model) -> None:
    first, second = adapter_factory(1), adapter_factory(3)
    headers = {"X-Run-Id": run_id}
    policy = f"{paired_sampler.url}/trainers_policy_version"
    assert httpx.get(policy, headers=headers).json() == {"policy_version": 0}

    first.save(loops_home, run_id, "sampler-1", step=1)
    assert helpers.publish(loops_home, run_id, 1, "sampler-1",
                           sampler_url=paired_sampler.url).status_code == 200
    assert httpx.get(policy, headers=headers).json() == {"policy_version": 1}
    floor = {**headers, "X-Min-Policy-Version": "1"}
    _assert_serves(sample(paired_sampler.url, GREEDY, headers=floor), first.model, 1)
    # No routing header: the base model, even with a live adapter (spec Q4).
    _assert_serves(sample(paired_sampler.url, GREEDY, headers=headers), reference_model, 0)

    # The same name saved again under a new version is re-read (spec 7.3).
    second.save(loops_home, run_id, "sampler-1", step=2)
    helpers.publish(loops_home, run_id, 2, "sampler-1", sampler_url=paired_sampler.url)
    _assert_serves(sample(paired_sampler.url, GREEDY, headers=floor), second.model, 2)

    # init_trainer_server / load_state drop the live adapter: live = 0 (spec Q3).
    response = helpers.publish(loops_home, run_id, 0, None, sampler_url=paired_sampler.url)
    assert response.json() == {"run_id": run_id, "live": 0}
    assert httpx.get(policy, headers=headers).json() == {"policy_version": 0}
    assert sample(paired_sampler.url, GREEDY, headers=floor).status_code == 408


def test_live_json_alone_is_picked_up_by_polling(sampler_server, loops_home, run_id,
                                                 adapter_factory) -> None:
    adapter = adapter_factory(2)
    headers = {"X-Run-Id": run_id}
    policy = f"{sampler_server.url}/trainers_policy_version"
    assert httpx.get(policy, headers=headers).json()["policy_version"] == 0
    adapter.save(loops_home, run_id, "polled", step=7)
    weight_sync.write_live(loops_home, run_id, 7, "polled")
    deadline = time.monotonic() + 10
    while httpx.get(policy, headers=headers).json()["policy_version"] != 7:
        assert time.monotonic() < deadline, "LIVE.json change not picked up"
        time.sleep(0.1)
    _assert_serves(sample(sampler_server.url, GREEDY,
                          headers={**headers, "X-Min-Policy-Version": "7"}), adapter.model, 7)


def test_internal_live_refuses_bad_notices(paired_sampler, run_id) -> None:
    url = f"{paired_sampler.url}/internal/live"
    missing = httpx.post(url, json={"run_id": run_id, "version": 1, "name": "nothing-here"})
    assert missing.status_code == 422
    assert missing.json()["details"]["reason"] == "UNKNOWN_CHECKPOINT"
    bad = httpx.post(url, json={"run_id": "../etc", "version": -1, "name": "x"})
    assert bad.status_code == 422 and "run_id" in bad.json()["detail"]
    assert httpx.get(f"{paired_sampler.url}/trainers_policy_version",
                     headers={"X-Run-Id": run_id}).json() == {"policy_version": 0}


def test_paired_sampler_registers_and_lists_its_live_adapter(
        paired_sampler, paired_run, loops_home, adapter_factory) -> None:
    assert weight_sync.paired_sampler_url(loops_home, paired_run) == paired_sampler.url
    adapter_factory(5).save(loops_home, paired_run, "listed", step=1)
    # Published exactly as the trainer does: to the registered URL.
    response = helpers.publish(loops_home, paired_run, 1, "listed")
    assert response is not None and response.status_code == 200
    models = httpx.get(f"{paired_sampler.url}/v1/models").json()["data"]
    assert models[0] == {**models[0], "id": "tiny", "parent": None}
    assert {"id": "default", "parent": "tiny"}.items() <= models[1].items()
    # Without X-Run-Id, the policy version is the paired run's.
    assert httpx.get(f"{paired_sampler.url}/trainers_policy_version").json() == {
        "policy_version": 1}
