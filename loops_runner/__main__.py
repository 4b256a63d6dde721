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

    from loops_runner.data.sources import DataError
    from loops_runner.runner.app import run_job, sweep_value
    from loops_runner.runner.config import ConfigError

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        return sweep_value(cfg, run_job(cfg, run_dir))
    except (ConfigError, DataError) as error:
        # One line for the user: Hydra would add a traceback and its HYDRA_FULL_ERROR hint.
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
