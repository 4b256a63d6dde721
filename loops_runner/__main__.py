"""``python -m loops_runner +recipe=<name> [overrides]``: the Hydra app."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(config_path="pkg://conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> Any:
    from hydra.types import RunMode

    from loops_runner.runner.app import run_job, sweep_value
    from loops_runner.runner.config import ConfigError

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        if cfg.get("pipeline") is not None:
            from loops_runner.runner.pipeline import run_pipeline

            overrides = list(HydraConfig.get().overrides.task)
            return sweep_value(cfg, run_pipeline(cfg, run_dir, overrides))
        return sweep_value(cfg, run_job(cfg, run_dir))
    except ConfigError as error:
        print(f"loops-runner: {error}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # fail this sweep job only; Hydra goes on with the next
        sys.exit(2)


def run() -> None:
    from loops_runner.runner import overrides, run_dirs

    overrides.install()
    run_dirs.register()
    main()


if __name__ == "__main__":
    run()
