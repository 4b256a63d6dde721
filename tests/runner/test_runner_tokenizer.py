"""The runner, not the client, resolves local model names for the tokenizer."""

from __future__ import annotations

from pathlib import Path

from loops_runner.runner.budget import Budget
from loops_runner.runner.config import ExternalBackend, ModelSection, RunnerConfig
from loops_runner.runner.context import RunContext
from loops_runner.sdk import TrainingClient


def test_an_external_backend_run_tokenizes_a_local_model_name(trainer_server, run_id,
                                                              tmp_path: Path) -> None:
    # backend=external keeps the configured name "tiny" (no control plane resolves it).
    config = RunnerConfig(
        backend=ExternalBackend(kind="external", trainer_url=trainer_server.url,
                                sampler_url="http://127.0.0.1:9"),
        model=ModelSection(base_model="tiny"), recipe={})
    with TrainingClient(trainer_server.url, lora_rank=4, base_model="tiny",
                        run_id=run_id) as training:
        ctx = RunContext(config=config, service_client=None, training_client=training,
                         run_dir=tmp_path, metrics=None, record=None,  # type: ignore[arg-type]
                         budget=Budget())
        ids = ctx.tokenizer.encode("the runner resolves tiny")
    assert ids and all(0 <= i < 4096 for i in ids)
