"""Pipelines: stages run in order, each stage's final checkpoint the next one's ``init_from``.

``python -m loops_runner +pipeline=sft_then_rl [overrides]``. Each stage is an
ordinary runner job, composed from the same config tree as
``+recipe=<stage.recipe> <stage.overrides> <the command's overrides>
init_from=<previous stage's final checkpoint>``, and run in its own run dir
``<pipeline run dir>/<stage name>``. Resuming is the runner's own: a re-run
finds a completed stage's ``run.json`` and skips it, and resumes an
interrupted stage from its latest checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from rich.console import Console

from loops_runner.runner.config import ConfigError, describe_errors
from loops_runner.runner.run_record import RunRecord
from loops_runner.storage.atomic import atomic_write_json
from loops_runner.wire.names import check_storage_name

PIPELINE_FILE = "pipeline.json"


class Stage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    recipe: str = Field(min_length=1)
    overrides: list[str] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _folder_name(cls, value: str) -> str:
        return check_storage_name(value)


class Pipeline(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    stages: list[Stage] = Field(min_length=1)

    @field_validator("stages")
    @classmethod
    def _unique_names(cls, stages: list[Stage]) -> list[Stage]:
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        return stages


def validate_pipeline(raw: Any) -> Pipeline:
    try:
        return Pipeline.model_validate(raw)
    except ValidationError as error:
        raise ConfigError("invalid pipeline: " + describe_errors(error, Pipeline,
                                                                  "pipeline.")) from None


def _shared_overrides(task_overrides: list[str]) -> list[str]:
    """The command's overrides that apply to every stage (not the pipeline's own keys)."""
    return [o for o in task_overrides
            if not o.lstrip("+~").startswith(("pipeline", "init_from", "recipe", "hydra"))]


def final_checkpoint(stage_dir: Path, stage: Stage) -> str:
    record = RunRecord.load(stage_dir)
    latest = record.latest_checkpoint() if record else None
    if latest is None:
        raise ConfigError(f"pipeline stage {stage.name!r} finished without a checkpoint, so "
                          "the next stage has nothing to start from")
    return latest.path


def run_pipeline(cfg: DictConfig, pipeline_dir: Path, task_overrides: list[str],
                 console: Console | None = None) -> dict[str, Any]:
    """Run (or resume) every stage in order; return the last stage's final metrics."""
    from hydra import compose

    from loops_runner.runner.app import run_job

    console = console or Console()
    pipeline = validate_pipeline(OmegaConf.to_container(cfg.pipeline, resolve=True))
    pipeline_dir.mkdir(parents=True, exist_ok=True)
    shared = _shared_overrides(task_overrides)
    init_from: str | None = cfg.get("init_from")
    state: dict[str, Any] = {"name": pipeline.name, "stages": []}
    final: dict[str, Any] = {}
    for index, stage in enumerate(pipeline.stages, start=1):
        stage_dir = pipeline_dir / stage.name
        overrides = [f"+recipe={stage.recipe}", *stage.overrides, *shared]
        if init_from:
            overrides.append(f"init_from={init_from}")
        stage_cfg = compose(config_name="config", overrides=overrides)
        console.rule(f"pipeline {pipeline.name}: stage {index}/{len(pipeline.stages)} "
                     f"{stage.name} ({stage.recipe})")
        started = time.time()
        final = run_job(stage_cfg, stage_dir, console)
        if cfg.get("dry_run"):  # each stage's plan; no stage trains, so none has a checkpoint
            init_from = None
            continue
        init_from = final_checkpoint(stage_dir, stage)
        state["stages"].append({"name": stage.name, "recipe": stage.recipe,
                                "run_dir": str(stage_dir), "final_checkpoint": init_from,
                                "final_metrics": final, "finished_at": time.time(),
                                "seconds": round(time.time() - started, 1)})
        atomic_write_json(pipeline_dir / PIPELINE_FILE, state)
    if cfg.get("dry_run"):
        return final
    console.print(f"[green]Pipeline {pipeline.name} done.[/green] Final checkpoint: {init_from}")
    return final
