"""The client's import path stays light: no torch, transformers or wandb until needed."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_the_client_imports_only_the_wire_types_of_this_package() -> None:
    """The client stands alone: no model registry, servers or runner behind it."""
    allowed = ("loops_runner.sdk", "loops_runner.wire")
    for path in Path(sdk.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            for module in modules:
                if module == "loops_runner":  # __version__ only
                    assert isinstance(node, ast.ImportFrom)
                    assert [a.name for a in node.names] == ["__version__"], path
                elif module.startswith("loops_runner"):
                    assert module.startswith(allowed), f"{path.name} imports {module}"


def test_a_local_model_name_is_not_resolved_by_the_client(tmp_path, monkeypatch) -> None:
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from loops_runner.sdk.tokenizer import load_tokenizer

    home_before = sorted(tmp_path.iterdir())
    monkeypatch.setenv("LOOPS_HOME", str(tmp_path))
    with pytest.raises(OSError, match=r"no tokenizer for 'tiny'.*resolve_model\('tiny'\)"):
        load_tokenizer("tiny")
    assert sorted(tmp_path.iterdir()) == home_before  # nothing was built
