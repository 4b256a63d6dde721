"""Porting a Baseten Loops 0.32 script: only the import line changes.

Each call shape below is one the official ``baseten-loops`` 0.32 package
documents (names, keywords, environment variables). Against the local stack
each either works, or fails with an error that names the option and says why.
The official package's ``__all__`` is listed here as it ships, so a name it
exports that we lack is a deliberate, explained gap rather than an accident.
"""

from __future__ import annotations

import asyncio
import warnings

import httpx
import pytest

import loops_runner.sdk as sdk
from loops_runner.sdk import (
    AvailabilityModel,
    ModelInput,
    Operation,
    RemoteOpError,
    RequestRejectedError,
    SamplerTerminatedError,
    SampleTimeoutError,
    SamplingClient,
    SamplingParams,
    ServiceClient,
    TrainerTerminatedError,
    TrainingClient,
)
from loops_runner.sdk.control_plane import ControlPlaneClient
from loops_runner.sdk.deployments import SamplerEndpoint
from tests.sdk.helpers import LR, batch

# ``baseten.loops.__all__`` of baseten-loops 0.32.0.
OFFICIAL_EXPORTS = (
    "ServiceClient", "TrainingClient", "DedicatedTrainerDeployment", "LocalTrainerDeployment",
    "ServerlessTrainerDeployment", "SamplingClient", "APIFuture", "Operation",
    "TrainerOperationContext", "SamplerOperationContext", "RemoteOpError",
    "UnknownRequestError", "ServerShutdownError", "SamplerTerminatedError",
    "SampleTimeoutError", "loops_log_kl_sample_train", "AdamParams", "AvailabilityModel",
    "Checkpoint", "CheckpointDownload", "CheckpointFile", "CheckpointFilesResponse",
    "CheckpointTarget", "Datum", "EncodedTextChunk", "ExternalRef", "ForwardBackwardOutput",
    "InitTrainerServerResponse", "ImageAssetPointerChunk", "ImageChunk",
    "LoadWeightsResponse", "LoraAdapterConfig", "LossFnType", "ModelInput",
    "ModelInputChunk", "OptimStepResponse", "SampledSequence", "SampleResponse",
    "SamplingParams", "SaveWeightsForSamplerResponse", "SaveWeightsResponse",
    "ServerCapabilities", "StopReason", "SupportedModel", "TensorData", "WandbConfig",
)
# Names the official package exports that this client does not, and why.
NOT_PROVIDED = {
    "loops_log_kl_sample_train": "the official RL diagnostics module (W&B histograms of "
                                 "sampler-vs-trainer logprobs) has no counterpart here",
    "ImageAssetPointerChunk": "a type the official package itself refuses to construct; "
                              "image input is ImageChunk",
}
TOKENS = [41, 42, 43, 44, 45, 46, 47, 48]
STOP = {"detail": "stopped by the test"}


def test_the_official_names_are_exported() -> None:
    missing = [name for name in OFFICIAL_EXPORTS
               if not hasattr(sdk, name) and name not in NOT_PROVIDED]
    assert missing == []
    assert not any(hasattr(sdk, name) for name in NOT_PROVIDED)
    assert isinstance(sdk.__version__, str) and sdk.__version__
    assert [m.value for m in AvailabilityModel] == ["dedicated", "spot"]
    # The official hierarchy: terminal deployments are RuntimeErrors, timeouts TimeoutErrors.
    assert issubclass(TrainerTerminatedError, RuntimeError)
    assert issubclass(SamplerTerminatedError, RuntimeError)
    assert issubclass(SampleTimeoutError, TimeoutError)


def test_options_reach_the_control_plane_as_the_official_client_sends_them(
        control_plane_server, proxy, monkeypatch) -> None:
    front = proxy(control_plane_server.url)
    # Stop trainer creation at the proxy: only what the client sends matters here.
    front.inject("/v1/teams/team-local/loops/debug/trainers", method="POST", status=422,
                 body=STOP)
    front.inject("/v1/loops/trainers", method="POST", status=422, body=STOP)
    monkeypatch.setenv("LOOPS_TEAM", "local")
    monkeypatch.setenv("LOOPS_AVAILABILITY_MODEL", "spot")
    monkeypatch.setenv("BASETEN_LOOPS_SCOPE", "deployment")

    from_env = ServiceClient(base_url=front.url)
    assert from_env.availability_model is AvailabilityModel.spot
    with pytest.raises(RequestRejectedError, match="stopped by the test"):
        from_env.create_lora_training_client(
            "tiny", rank=4, replicas=2, max_seq_len=64, name="ported", with_sampler=True,
            sampler_num_replicas=1, sampler_timeout=30.0, base_checkpoint="hf://org/m@abc")
    assert front.seen("GET", "/v1/teams")
    session = front.seen("POST", "/v1/teams/team-local/loops/sessions")[0]
    assert session.body == b""
    trainer = front.seen("POST", "/v1/teams/team-local/loops/debug/trainers")[0].json()
    assert trainer == {"session_id": from_env.session_id, "base_model": "tiny",
                       "lora_rank": 4, "replicas": 2, "availability_model": "spot",
                       "max_seq_len": 64, "name": "ported", "scope": "deployment",
                       "base_checkpoint": "hf://org/m@abc"}

    # Keywords win over the environment; "default" scope takes the plain route.
    monkeypatch.delenv("LOOPS_TEAM")
    explicit = ServiceClient(base_url=front.url, availability_model=AvailabilityModel.dedicated)
    with pytest.raises(RequestRejectedError):
        explicit.create_lora_training_client("tiny", scope="default")
    plain = front.seen("POST", "/v1/loops/trainers")[0].json()
    assert plain["availability_model"] == "dedicated" and "scope" not in plain


def test_bad_option_values_fail_before_anything_is_provisioned(control_plane_server, proxy,
                                                               monkeypatch) -> None:
    front = proxy(control_plane_server.url)
    with pytest.raises(ValueError, match=r"team 'nope' does not exist.*available teams: local"):
        ServiceClient(base_url=front.url, team="nope")
    with pytest.raises(ValueError, match="availability_model must be one of 'dedicated', "
                                         "'spot', got 'cheap'"):
        ServiceClient(base_url=front.url, availability_model="cheap")
    monkeypatch.setenv("LOOPS_AVAILABILITY_MODEL", "cheap")
    with pytest.raises(ValueError, match="LOOPS_AVAILABILITY_MODEL must be one of"):
        ServiceClient(base_url=front.url)
    monkeypatch.delenv("LOOPS_AVAILABILITY_MODEL")

    client = ServiceClient(base_url=front.url)
    monkeypatch.setenv("BASETEN_LOOPS_SCOPE", "everywhere")
    with pytest.raises(ValueError, match="BASETEN_LOOPS_SCOPE must be one of"):
        client.create_lora_training_client("tiny")
    with pytest.raises(ValueError, match="BASETEN_LOOPS_SCOPE must be one of"):
        client.create_sampling_client("tiny")
    monkeypatch.delenv("BASETEN_LOOPS_SCOPE")
    with pytest.raises(ValueError, match="scope must be one of"):
        client.create_sampling_client("tiny", scope="team")  # a trainer-only pool
    with pytest.raises(ValueError, match="replicas must be >= 1, got 0"):
        client.create_lora_training_client("tiny", replicas=0)
    with pytest.raises(ValueError, match="sampler_num_replicas must be >= 1, got 0"):
        client.create_lora_training_client("tiny", sampler_num_replicas=0)
    with pytest.raises(ValueError, match="num_replicas must be >= 1, got 0"):
        client.create_sampling_client("tiny", num_replicas=0)
    with pytest.raises(ValueError, match="replicas must be >= 1, got 0"):
        client.create_training_client_from_state("bt://loops:r/weights/w", replicas=0)
    reusing = ServiceClient(base_url=front.url, reuse_from_run_id="run-x")
    with pytest.raises(ValueError, match="base_checkpoint cannot be combined with trainer reuse"):
        reusing.create_lora_training_client("tiny", base_checkpoint="hf://org/m")
    assert not front.seen("POST", "/v1/loops/trainers")
    assert not front.seen("POST", "/v1/loops/samplers")

    # Servers started by hand cannot be re-provisioned: each such option is refused.
    local = ServiceClient.local(trainer_url="http://127.0.0.1:9", sampler_url="http://127.0.0.1:9")
    for option, value in {"scope": "team", "replicas": 2, "sampler_num_replicas": 2,
                          "base_checkpoint": "hf://org/m"}.items():
        with pytest.raises(ValueError, match=f"{option}=.* ServiceClient.local"):
            local.create_lora_training_client("tiny", **{option: value})
    with pytest.raises(ValueError, match=r"num_replicas=2 .* ServiceClient.local"):
        local.create_sampling_client("tiny", num_replicas=2)


def test_what_the_local_control_plane_cannot_honour_is_refused_by_name(
        control_plane_server) -> None:
    client = ServiceClient(base_url=control_plane_server.url)
    with pytest.raises(RequestRejectedError, match="base_checkpoint is not supported") as info:
        client.create_lora_training_client("tiny", base_checkpoint="hf://org/merged@abc")
    assert info.value.status_code == 501
    with pytest.raises(RequestRejectedError, match="scope 'serverless' cannot be honoured"):
        client.create_lora_training_client("tiny", scope="serverless")
    with pytest.raises(RequestRejectedError, match="scope 'serverless' cannot be honoured"):
        client.create_sampling_client("tiny", scope="serverless")


def test_an_official_style_script_runs_on_the_local_stack(control_plane_server, service,
                                                          proxy) -> None:
    # As in Baseten's docs, with every option the local stack honours.
    service_client = ServiceClient(base_url=control_plane_server.url, team="local",
                                   availability_model="dedicated",
                                   reuse_from_session_id=service.session_id)
    training_client = service_client.create_lora_training_client(
        "tiny", rank=4, replicas=1, seed=3, max_seq_len=64, timeout=120.0, ready_timeout=300.0,
        sampler_timeout=60.0, with_sampler=True, name="ported", sampler_num_replicas=1,
        scope="deployment")
    run_id = training_client.run_id
    training_client.forward_backward(batch(1)).result()
    training_client.optim_step(LR).result()
    staged = training_client.save_weights_for_sampler().result()
    assert staged.path == f"bt://loops:{run_id}/sampler_weights/default"
    sampling_client = training_client.save_weights_and_get_sampling_client()
    asyncio.run(sampling_client.ensure_ready_async())
    sampled = sampling_client.sample(ModelInput.from_ints(TOKENS), num_samples=1,
                                     sampling_params=SamplingParams(max_tokens=2, seed=1))
    assert sampled.policy_version == 1 and len(sampled.sequences[0].tokens) == 2

    saved = training_client.save_state("ported-state").result()
    resumed = service_client.create_training_client_from_state_with_optimizer(saved.path,
                                                                             replicas=1)
    assert resumed.policy_version == 1 and resumed.run_id != run_id
    resumed.close()

    # A failed operation carries its Operation, as the official RemoteOpError does.
    run = httpx.get(f"{control_plane_server.url}/v1/loops/runs/{run_id}").json()["run"]
    front = proxy(run["base_url"])
    direct = TrainingClient(front.url, lora_rank=4, base_model="tiny", run_id=run_id)
    front.inject("/operations/", method="GET", status=200,
                 body={"status": "error", "error": "boom", "error_class": "ValueError"})
    with pytest.raises(RemoteOpError, match="boom") as info:
        direct.forward_backward(batch(2)).result()
    descriptor = info.value.descriptor
    assert isinstance(descriptor, Operation) and descriptor.name == "forward_backward"
    assert descriptor.operation_id == info.value.operation_id and descriptor.operation_id
    assert descriptor.client.run_id == run_id
    assert descriptor.fields()["run_id"] == run_id
    for client in (direct, training_client):
        client.close()


def test_terminal_deployments_and_timeouts_carry_the_official_attributes(
        control_plane_server, service, proxy) -> None:
    front = proxy(control_plane_server.url)
    front.inject("/v1/loops/deployments/", method="GET", status=200,
                 body={"deployment": {"id": "dep-t", "status": {"name": "STOPPED"}}})
    reusing = ServiceClient(base_url=front.url, reuse_from_session_id=service.session_id)
    with pytest.raises(RuntimeError) as stopped:
        reusing.create_lora_training_client("tiny", rank=4, ready_timeout=60.0)
    assert isinstance(stopped.value, TrainerTerminatedError)
    assert stopped.value.status == "STOPPED" and stopped.value.deployment_id

    front.inject("/v1/models/model-s/deployments/dep-s", method="GET", status=200,
                 body={"status": "DEPLOY_FAILED"})
    endpoint = SamplerEndpoint(front.url, "dedicated", "sampler-s", "model-s", "dep-s")
    sampler = SamplingClient(base_model="tiny", endpoint=endpoint,
                             control_plane=ControlPlaneClient(front.url, None))
    with pytest.raises(SamplerTerminatedError) as failed:
        asyncio.run(sampler.ensure_ready_async(10.0))
    assert (failed.value.deployment_id, failed.value.status) == ("dep-s", "DEPLOY_FAILED")

    front.inject("/sample", method="POST", delay=3.0)
    slow = SamplingClient(base_model="tiny", endpoint=front.url, timeout=0.5)
    with pytest.raises(SampleTimeoutError) as late:
        slow.sample(ModelInput.from_ints(TOKENS))
    assert late.value.timeout == 0.5


def test_the_official_submodule_names_import_after_changing_the_prefix() -> None:
    from loops_runner.sdk.models import Datum, ModelInput, TensorData
    from loops_runner.sdk.sampling_client import (
        BasetenDeployment,
        DeploymentConfig,
        LocalDeployment,
        ServerlessDeployment,
    )
    from loops_runner.sdk.sampling_client import SamplerTerminatedError as FromSampling
    from loops_runner.sdk.sampling_client import SampleTimeoutError as TimeoutFromSampling
    from loops_runner.sdk.training_client import CustomLossFnV1, ForwardBackwardFuture

    assert FromSampling is SamplerTerminatedError and TimeoutFromSampling is SampleTimeoutError
    assert Datum is sdk.Datum and ModelInput is sdk.ModelInput
    assert TensorData.from_list(data=[[1, 2], [3, 4]], dtype="int64").shape == [2, 2]
    assert TensorData.from_list([0.5]).dtype == "float32"
    dedicated = BasetenDeployment("http://h/sync/", "m-1", "d-1", "https://api")
    assert isinstance(dedicated, DeploymentConfig) and dedicated.kind == "dedicated"
    assert (dedicated.base_url, dedicated.model_id, dedicated.deployment_id,
            dedicated.api_base_url) == ("http://h/sync", "m-1", "d-1", "https://api")
    assert LocalDeployment("http://l/").kind == "local"
    assert ServerlessDeployment("http://s").queued
    from loops_runner.sdk.custom_loss import CustomLossFn

    assert CustomLossFnV1 is CustomLossFn
    assert {"result", "result_async", "done"} <= set(dir(ForwardBackwardFuture))


def test_exceptions_take_the_official_positional_forms() -> None:
    from loops_runner.sdk import ServerShutdownError, TrainerOperationContext, UnknownRequestError

    terminated = SamplerTerminatedError("dep-1", "FAILED")
    assert (terminated.deployment_id, terminated.status) == ("dep-1", "FAILED")
    assert "dep-1" in str(terminated) and "FAILED" in str(terminated)
    assert TrainerTerminatedError("dep-2", "STOPPED").status == "STOPPED"
    ours = SamplerTerminatedError("gone", deployment_id="dep-3", status="INACTIVE")
    assert (ours.deployment_id, ours.status) == ("dep-3", "INACTIVE")
    assert SampleTimeoutError(30.0).timeout == 30.0 and SampleTimeoutError(None).timeout is None
    assert SampleTimeoutError("slow", timeout=5.0).timeout == 5.0
    failed = RemoteOpError("boom", "ValueError", operation=Operation(
        "op-1", "forward_backward", TrainerOperationContext(run_id="run-1")))
    assert failed.error_class == "ValueError" and failed.run_id == "run-1"
    assert failed.descriptor.operation_id == "op-1" and failed.operation == "forward_backward"
    assert isinstance(UnknownRequestError(), Exception)
    assert isinstance(ServerShutdownError(), Exception)


def test_a_positional_call_past_rank_warns_with_the_keyword(control_plane_server, proxy) -> None:
    from loops_runner.sdk.options import PositionalOrderWarning

    front = proxy(control_plane_server.url)
    front.inject("/v1/loops/trainers", method="POST", status=422, body=STOP)
    client = ServiceClient(base_url=front.url)
    # (base_model, rank) mean the same in both clients: no warning.
    with pytest.raises(RequestRejectedError), warnings.catch_warnings():
        warnings.simplefilter("error", PositionalOrderWarning)
        client.create_lora_training_client("tiny", 4)
    # The official code would read 7 as replicas; here it is the seed, and the user is told.
    with pytest.warns(PositionalOrderWarning, match=r"argument 3 .* read as 'seed'; the "
                                                    r"Baseten SDK reads it as 'replicas'.*"
                                                    r"seed=\.\.\."), \
            pytest.raises(RequestRejectedError):
        client.create_lora_training_client("tiny", 4, 7)
    assert front.seen("POST", "/v1/loops/trainers")[-1].json()["seed"] == 7
    with pytest.warns(PositionalOrderWarning, match="read as 'page_size'.*reads it as 'name'"), \
            pytest.raises(RequestRejectedError):
        client.get_checkpoint_archive_url("ckpt-none", 10)
