"""Streaming a training client's metrics to Weights & Biases.

Each training client with a ``WandbConfig`` gets its own W&B run. The loss
and metrics of every ``forward_backward`` result are staged, and each
``optim_step`` result commits one row with its optimizer metrics, so one row
is one training step. Metrics are logged when a result is first known
(``result()`` or ``await``).

Offline unless the user configured W&B: ``WANDB_MODE`` is obeyed when set;
otherwise the run is online only when credentials exist (``WANDB_API_KEY`` or
a netrc entry for the W&B host), so nothing ever blocks on a login prompt.
wandb is imported only when a ``WandbConfig`` is given.
"""

from __future__ import annotations

import logging
import netrc
import os
import threading
from typing import Any
from urllib.parse import urlparse

from loops_runner.wire import ForwardBackwardOutput, OptimStepResponse, WandbConfig

logger = logging.getLogger("loops_runner.sdk")


def has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode() -> str | None:
    """None: let wandb read ``WANDB_MODE``; else the mode to force."""
    if os.environ.get("WANDB_MODE"):
        return None
    return None if has_credentials() else "offline"


class WandbLogger:
    def __init__(self, config: WandbConfig, run_config: dict[str, Any] | None = None) -> None:
        import wandb

        self._lock = threading.Lock()
        mode = resolve_mode()
        init_args: dict[str, Any] = {"project": config.project, "name": config.name,
                                     "config": run_config or {}, "reinit": "create_new"}
        if mode is not None:
            init_args["mode"] = mode
        self.run = wandb.init(**init_args)
        self.steps = 0
        logger.info("W&B run %s (%s) for project %s", self.run.id,
                    mode or os.environ.get("WANDB_MODE", "online"), config.project)

    @property
    def directory(self) -> str:
        """The run's local directory (``.../wandb/offline-run-...``)."""
        return str(self.run.dir)

    def log_forward_backward(self, result: ForwardBackwardOutput) -> None:
        row = {"loss": result.loss, **result.metrics}
        with self._lock:
            self.run.log(row, commit=False)

    def log_optim_step(self, result: OptimStepResponse) -> None:
        with self._lock:
            self.steps += 1
            self.run.log({"optim_step": self.steps, **(result.metrics or {})}, commit=True)

    def finish(self) -> None:
        with self._lock:
            self.run.finish()
