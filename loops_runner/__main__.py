"""``python -m loops_runner +recipe=<name> [overrides]``: the Hydra app."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from loops_runner.runner import end_hooks


@hydra.main(config_path="pkg://loops_runner.conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> Any:
    from hydra.types import RunMode

    from loops_runner.errors import UserInputError
    from loops_runner.runner.app import run_job, sweep_value
    from loops_runner.runner.sweep import portable_error

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        if cfg.get("pipeline") is not None:
            from loops_runner.runner.stages import run_pipeline

            overrides = list(HydraConfig.get().overrides.task)
            return sweep_value(cfg, run_pipeline(cfg, run_dir, overrides))
        return sweep_value(cfg, run_job(cfg, run_dir))
    except UserInputError as error:
        # One line for the user: Hydra would add a traceback and its HYDRA_FULL_ERROR hint.
        print(f"loops-runner: {error}", file=sys.stderr)
        if multirun:
            raise  # fail this sweep job only; Hydra goes on with the next
        sys.exit(2)
    except Exception as error:
        # A parallel launcher's worker sends the error back to the sweep's process.
        portable = portable_error(error) if multirun else error
        if portable is error:
            raise
        raise portable from error


def _write_report(folder: Path, console: Any) -> None:
    from loops_runner.report import write_report_quietly  # plotting loads only here

    write_report_quietly(folder, console)


# At import, not in run(): a sweep's joblib or Ray worker imports this module, never runs run().
end_hooks.install_report_writer(_write_report)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def _chain(error: BaseException | None) -> list[BaseException]:
    chain = []
    while error is not None and len(chain) < 10:
        chain.append(error)
        error = error.__context__
    return chain


def run() -> None:
    from loops_runner.runner import overrides, run_dirs, sweep

    # `kill` or a closed terminal ends the run as Ctrl-C does: the run is
    # recorded as stopped and a hosted trainer is stopped, not left billing.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    overrides.install()
    run_dirs.register()
    try:
        main()
    except KeyboardInterrupt:
        # The run said where it stopped and how to resume; no traceback for a Ctrl-C.
        from loops_runner.runner.app import InterruptReported

        if not any(isinstance(e, InterruptReported) for e in _chain(sys.exc_info()[1])):
            print("loops-runner: interrupted; re-run the same command to resume",
                  file=sys.stderr)
        sys.exit(130)
    finally:
        sweep.print_pending_summary()  # a sweep that ended on a failed job still gets its table


if __name__ == "__main__":
    run()
