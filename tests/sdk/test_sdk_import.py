"""The client's import path stays light: no torch, transformers or wandb until needed."""

from __future__ import annotations

import subprocess
import sys

import loops_runner.sdk as sdk

HEAVY = ("torch", "transformers", "wandb", "peft")


def test_importing_the_sdk_and_building_clients_imports_nothing_heavy() -> None:
    probe = (
        "import sys\n"
        "import loops_runner.sdk as sdk\n"
        "service = sdk.ServiceClient.local(trainer_url='http://127.0.0.1:9',"
        " sampler_url='http://127.0.0.1:9')\n"
        "sampling = service.create_sampling_client('tiny')\n"
        "sdk.TensorData(data=[1.0, None], dtype='float32')\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True, timeout=120)
    assert done.stdout.strip() == ""


def test_the_public_api_is_exported() -> None:
    for name in ("ServiceClient", "TrainingClient", "SamplingClient", "APIFuture",
                 "RemoteOpError", "UnknownRequestError", "ServerShutdownError",
                 "SampleTimeoutError", "AdamParams", "Datum", "ModelInput", "TensorData",
                 "SamplingParams", "SampleResponse", "SampledSequence", "WandbConfig",
                 "ForwardBackwardOutput", "OptimStepResponse", "SaveWeightsResponse",
                 "SaveWeightsForSamplerResponse", "LoadWeightsResponse", "Checkpoint",
                 "CheckpointFile", "CheckpointFilesResponse", "ServerCapabilities",
                 "SupportedModel", "GetInfoResponse", "CheckpointDownload"):
        assert name in sdk.__all__ and hasattr(sdk, name), name
    assert issubclass(sdk.SampleTimeoutError, TimeoutError)
