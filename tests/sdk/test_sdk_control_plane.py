"""The full client surface through the real control plane (``ServiceClient(base_url=...)``).

One run carries most of the scenario, in the order a user meets it: train,
save, list, fetch files, download, publish (version 0, then a trained
version), sample with a floor, sample a pinned checkpoint, load, resume into
new runs. The control plane provisions real trainer and sampler processes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from loops_runner.sdk import (
    AdamParams,
    ModelInput,
    RequestRejectedError,
    SamplingParams,
    ServiceClient,
    TrainingClient,
)
from tests.sdk.helpers import LR, assert_same_probe, batch, probe, sft_datum

REPO = Path(__file__).resolve().parents[2]
TOKENS = [41, 42, 43, 44, 45, 46, 47, 48]


def test_session_configuration_from_keywords_and_environment(control_plane_server, proxy,
                                                             monkeypatch) -> None:
    front = proxy(control_plane_server.url)
    monkeypatch.setenv("LOOPS_BASE_URL", front.url)
    monkeypatch.setenv("BASETEN_API_KEY", "env-key")
    monkeypatch.setenv("LOOPS_REUSE_FROM_SESSION_ID", "sess-from-env")
    monkeypatch.delenv("LOOPS_REUSE_FROM_RUN_ID", raising=False)
    # Stop trainer creation at the proxy: only its request body matters here.
    front.inject("/v1/loops/trainers", method="POST", status=422,
                 body={"detail": "stopped by the test"})

    from_env = ServiceClient()
    assert from_env.session_id.strip()
    with pytest.raises(RequestRejectedError, match="stopped by the test"):
        from_env.create_lora_training_client("tiny", rank=4, seed=7)
    explicit = ServiceClient("project-1", api_key="kw-key",
                             reuse_from_session_id="sess-from-kw")
    with pytest.raises(RequestRejectedError):
        explicit.create_lora_training_client("tiny")

    sessions = front.seen("POST", "/v1/loops/sessions")
    assert sessions[0].body == b"" and sessions[0].header("Content-Type") is None
    assert sessions[1].json() == {"training_project_id": "project-1"}
    assert sessions[0].header("Authorization") == "Api-Key env-key"
    assert sessions[1].header("Authorization") == "Api-Key kw-key"
    trainers = [r.json() for r in front.seen("POST", "/v1/loops/trainers")]
    assert trainers[0] == {"session_id": from_env.session_id, "base_model": "tiny",
                           "lora_rank": 4, "replicas": 1, "availability_model": "dedicated",
                           "seed": 7, "reuse_from_session_id": "sess-from-env"}
    assert trainers[1]["reuse_from_session_id"] == "sess-from-kw"
    assert trainers[1]["lora_rank"] == 32 and "seed" not in trainers[1]
    for record in front.seen():
        assert record.header("X-Baseten-Accept-Error") == "1"
        assert record.header("X-Run-Id") is None  # control-plane calls name runs in bodies


def test_capabilities(service) -> None:
    capabilities = service.get_server_capabilities()
    names = [model.model_name for model in capabilities.supported_models]
    assert "tiny" in names
    assert asyncio.run(service.get_server_capabilities_async()) == capabilities


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_run_lifecycle_through_the_control_plane(service, reusing_service, tmp_path) -> None:
    client = service.create_lora_training_client("tiny", rank=8, timeout=120,
                                                 ready_timeout=300)
    run_id = client.run_id
    assert run_id and client.session_id == service.session_id
    assert client.policy_version == 0
    assert client.get_info().lora_rank == 8
    assert client.get_tokenizer().encode("hello")

    # Publishing before any step is version 0: the base model, no floor.
    base = client.save_weights_and_get_sampling_client("v0")
    assert base.min_policy_version is None
    base_sample = base.sample(ModelInput.from_ints(TOKENS[:4]),
                              sampling_params=SamplingParams(max_tokens=2, seed=0))
    assert base_sample.policy_version == 0

    for step in range(2):
        client.forward_backward(batch(step)).result()
        client.optim_step(LR).result()
    saved = client.save_state("state-a").result()
    assert saved.path == f"bt://loops:{run_id}/weights/state-a"
    probe_at_save = probe(client)

    # The registry lists it, from both clients.
    listed = client.list_checkpoints()
    assert sorted((c.checkpoint_id, c.target) for c in listed) == [
        ("state-a", "trainer"), ("v0", "sampler")]
    assert service.list_checkpoints(run_id) == listed
    assert asyncio.run(service.list_checkpoints_async(run_id)) == listed
    checkpoint = next(c for c in listed if c.checkpoint_id == "state-a")
    assert checkpoint.lora_adapter_config.rank == 8 and checkpoint.id

    # Signed file URLs, paginated; they work without any client header.
    everything = client.get_checkpoint_archive_url(name="state-a")
    assert everything.next_page_token is None
    names = sorted(f.relative_file_name for f in everything.presigned_urls)
    assert "adapter_model.safetensors" in names and everything.total_count == len(names)
    first = service.get_checkpoint_archive_url(checkpoint.id, page_size=2)
    assert len(first.presigned_urls) == 2 and first.next_page_token is not None
    rest = asyncio.run(service.get_checkpoint_archive_url_async(
        checkpoint.id, 1000, first.next_page_token))
    assert sorted(f.relative_file_name for f in first.presigned_urls + rest.presigned_urls) \
        == names
    adapter = next(f for f in everything.presigned_urls
                   if f.relative_file_name == "adapter_model.safetensors")
    assert httpx.get(adapter.url).content[:8] != b""

    # Downloads land byte-identical (the manifest lists each file's sha256).
    download = client.download_checkpoint(dest_dir=str(tmp_path / "a"), name="state-a")
    assert download.file_count == len(names)
    manifest = json.loads((tmp_path / "a" / "checkpoint.json").read_text())
    for relative, digest in manifest["files"].items():
        assert _sha256(tmp_path / "a" / relative) == digest
    with pytest.raises(FileExistsError):
        service.download_checkpoint(checkpoint.id, dest_dir=str(tmp_path / "a"))
    again = asyncio.run(service.download_checkpoint_async(
        name="state-a", run_id=run_id, dest_dir=str(tmp_path / "b")))
    assert again.bytes_written == download.bytes_written

    # Publish the trained adapter; the returned client asks for that version.
    staged = client.save_weights_for_sampler("staged").result()
    assert staged.version == 2 and staged.path.endswith("/sampler_weights/staged")
    live = client.save_weights_and_get_sampling_client("live")
    assert live.min_policy_version == 2
    prompt = ModelInput.from_ints(TOKENS)
    result = live.sample(prompt, sampling_params=SamplingParams(max_tokens=3, seed=1))
    assert result.policy_version == 2
    # The sampler serves the very adapter the trainer trained.
    trainer_logprobs = client.forward([sft_datum(TOKENS)]).result()
    assert live.compute_logprobs(prompt)[1:] == pytest.approx(
        trainer_logprobs.loss_fn_outputs[0]["logprobs"].tolist(), abs=1e-3)

    # A pinned checkpoint serves until a newer version is published.
    pinned = client.create_sampling_client(staged.path)
    assert pinned.checkpoint_path == staged.path and pinned.min_policy_version == 3
    assert pinned.sample(prompt, sampling_params=SamplingParams(max_tokens=2)).sequences
    with pytest.raises(RequestRejectedError):
        client.create_sampling_client(f"bt://loops:{run_id}/sampler_weights/never-saved")

    # Keep training, then load the saved state back (weights only, step 0) ...
    client.forward_backward(batch(9)).result()
    client.optim_step(AdamParams(learning_rate=5e-2)).result()
    assert client.load_state(saved.path).result().step == 0
    assert client.policy_version == 0
    assert_same_probe(probe(client), probe_at_save, tol=1e-5)
    # ... or with the optimizer and the step.
    assert client.load_state_with_optimizer(saved.path).result().step == 2
    assert client.policy_version == 2

    # Resume into new runs (attached to the same warm trainer).
    resumed = reusing_service.create_training_client_from_state_with_optimizer(saved.path)
    assert resumed.run_id != run_id and resumed.policy_version == 2
    assert_same_probe(probe(resumed), probe_at_save, tol=1e-5)
    weights_only = asyncio.run(reusing_service.create_training_client_from_state_async(
        saved.path))
    assert weights_only.policy_version == 0
    assert_same_probe(probe(weights_only), probe_at_save, tol=1e-5)
    for c in (resumed, weights_only, client):
        c.close()


def test_async_provisioning_and_publishing(reusing_service) -> None:
    async def main() -> tuple:
        client: TrainingClient = await reusing_service.create_lora_training_client_async(
            "tiny", rank=4, ready_timeout=300)
        await (await client.forward_backward_async(batch(3))).result_async()
        await (await client.optim_step_async(LR)).result_async()
        saved = await (await client.save_state_async("async-state")).result_async()
        loaded = await (await client.load_state_async(saved.path)).result_async()
        with_optimizer = await (await client.load_state_with_optimizer_async(
            saved.path)).result_async()
        staged = await (await client.save_weights_for_sampler_async("async-w")).result_async()
        sampling = await client.save_weights_and_get_sampling_client_async("async-live")
        sample = await sampling.sample_async(ModelInput.from_ints(TOKENS),
                                             sampling_params=SamplingParams(max_tokens=2))
        scores = await sampling.compute_logprobs_async(ModelInput.from_ints(TOKENS))
        assert scores[0] is None and len(scores) == len(TOKENS)
        custom = await (await client.forward_backward_custom_async(
            batch(4), lambda _, lps: (-sum(lp.sum() for lp in lps), {"custom": 1.0})))
        assert custom.metrics["custom"] == 1.0
        pinned = await client.create_sampling_client_async(staged.path)
        listed = await client.list_checkpoints_async()
        files = await client.get_checkpoint_archive_url_async(name="async-state")
        await client.aclose()
        resumed = await reusing_service.create_training_client_from_state_with_optimizer_async(
            saved.path)
        version = resumed.policy_version
        resumed.close()
        return loaded, with_optimizer, sample, pinned, listed, files, version

    loaded, with_optimizer, sample, pinned, listed, files, version = asyncio.run(main())
    assert version == 1
    assert loaded.step == 0 and with_optimizer.step == 1
    assert sample.policy_version == 1
    assert pinned.min_policy_version == 2
    assert {c.checkpoint_id for c in listed} == {"async-state", "async-w", "async-live"}
    assert files.total_count >= 2


def test_standalone_sampler(service, reusing_service) -> None:
    sampling = service.create_sampling_client("tiny", timeout=60)
    result = sampling.sample(ModelInput.from_ints(TOKENS), num_samples=2,
                             sampling_params=SamplingParams(max_tokens=3, seed=5))
    assert len(result.sequences) == 2 and result.policy_version == 0
    assert sampling.get_base_model() == "tiny"
    assert sampling.get_tokenizer().decode(result.sequences[0].tokens) is not None
    # Another session reusing this one's sampler gets the same process.
    again = asyncio.run(reusing_service.create_sampling_client_async("tiny"))
    assert again.base_url == sampling.base_url
    assert again.sample(ModelInput.from_ints(TOKENS), sampling_params=SamplingParams(
        max_tokens=3, seed=5)).sequences[0].tokens == result.sequences[0].tokens
    with pytest.raises(ValueError, match="exactly one of base_model and model_path"):
        service.create_sampling_client("tiny", model_path="bt://loops:r/sampler_weights/w")
    with pytest.raises(ValueError, match="exactly one"):
        service.create_sampling_client()


def test_the_minimal_example_runs_against_the_local_stack(control_plane_server, service,
                                                          loops_home) -> None:
    env = {**os.environ, "LOOPS_BASE_URL": control_plane_server.url,
           "LOOPS_HOME": str(loops_home), "BASE_MODEL": "tiny", "STEPS": "6",
           # Attach to the warm trainer and sampler (as a user re-running a script would).
           "LOOPS_REUSE_FROM_SESSION_ID": service.session_id}
    env.pop("BASETEN_API_KEY", None)
    done = subprocess.run([sys.executable, str(REPO / "examples" / "minimal.py")], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    losses = [float(line.split("loss ")[1]) for line in lines if line.startswith("step ")]
    assert len(losses) == 6 and min(losses[1:]) < losses[0] / 2
    assert any(line.startswith("sampled: ") for line in lines)
    assert "policy version: 6" in lines


def test_a_checkpoint_samples_after_its_run_was_stopped(reusing_service) -> None:
    from loops_runner.runner.hosted_runs import stop_run

    client = reusing_service.create_lora_training_client("tiny", rank=4, seed=3)
    client.forward_backward(batch(21)).result()
    client.optim_step(LR).result()
    saved = client.save_weights_for_sampler("for-later").result()
    expected = client.forward([sft_datum(TOKENS)]).result().loss_fn_outputs[0]["logprobs"]
    client.close()
    control_plane = reusing_service.control_plane
    assert stop_run(control_plane, control_plane.get_run(client.run_id)).outcome == "stopped"
    assert control_plane.get_run(client.run_id).status == "STOPPED"

    # The base model comes from the checkpoint; a standalone sampler serves the adapter.
    sampling = reusing_service.create_sampling_client(model_path=saved.path)
    assert sampling.checkpoint_path == saved.path
    assert sampling.compute_logprobs(ModelInput.from_ints(TOKENS))[1:] == pytest.approx(
        expected.tolist(), abs=1e-3)
    assert sampling.sample(ModelInput.from_ints(TOKENS),
                           sampling_params=SamplingParams(max_tokens=2)).sequences
    with pytest.raises(ValueError, match="no Loops checkpoint"):
        reusing_service.create_sampling_client(
            model_path=f"bt://loops:{client.run_id}/sampler_weights/never-saved")


def test_a_session_stops_its_standalone_sampler_and_paired_ones_wait_for_their_trainer(
        control_plane_server, reusing_service) -> None:
    from loops_runner.runner.hosted_runs import stop_session
    from loops_runner.sdk import RequestRejectedError as Rejected

    own = ServiceClient(base_url=control_plane_server.url)
    sampler = own.create_sampling_client("tiny")
    assert sampler.sample(ModelInput.from_ints(TOKENS),
                          sampling_params=SamplingParams(max_tokens=1)).sequences
    control_plane = own.control_plane
    [info] = control_plane.list_samplers(own.session_id)
    assert info.run_id is None and info.model_id and info.status != "STOPPED"
    stopped = stop_session(control_plane, own.session_id)
    assert [(item.kind, item.id, item.outcome) for item in stopped] == \
        [("sampler", info.id, "stopped")]
    [after] = control_plane.list_samplers(own.session_id)
    assert after.status == "STOPPED"
    assert stop_session(control_plane, own.session_id) == []  # nothing left running

    # A paired sampler serves its trainer's open runs: the model route refuses it.
    client = reusing_service.create_lora_training_client("tiny", rank=4, with_sampler=True)
    paired = reusing_service.control_plane.get_run(client.run_id).sampler
    assert paired is not None and paired.model_id
    with pytest.raises(Rejected, match="still hosts open runs"):
        reusing_service.control_plane.deactivate_sampler(paired.model_id, paired.deployment_id)
    client.close()
