"""The control plane: one object that owns its state and hands requests to their handlers.

Routes parse and hand over: creates and deactivation to ``provisioning``,
reads to ``views``, checkpoint requests to ``checkpoint_requests``; the checks
they share are in ``checks`` (every refusal a ``servers.common.Refusal``). The
``ControlPlane`` builds them around one store, one supervisor (processes) and
one checkpoint registry, starts and stops them, and answers capabilities.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from loops_runner.models.registry import REGISTRY
from loops_runner.servers.control_plane.checkpoint_registry import CheckpointRegistry
from loops_runner.servers.control_plane.checkpoint_requests import CheckpointRequests
from loops_runner.servers.control_plane.checks import Checks
from loops_runner.servers.control_plane.files import FileSigner, load_or_create_secret
from loops_runner.servers.control_plane.placement import Placement, check_runs_per_trainer
from loops_runner.servers.control_plane.provisioning import Provisioning
from loops_runner.servers.control_plane.store import Store
from loops_runner.servers.control_plane.supervisor import Supervisor
from loops_runner.servers.control_plane.views import Views
from loops_runner.wire.control_plane import ServerCapabilities, SupportedModel
from loops_runner.wire.placement import DEFAULT_RUNS_PER_TRAINER

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    home: Path
    api_key: str | None = None
    idle_timeout: float = 1800.0
    # How long a create call waits for the new server's health before it
    # answers anyway (the SDK's create timeout is 300 s; it then keeps polling).
    create_wait: float = 240.0
    deploy_timeout: float = 1800.0
    url_ttl_seconds: int = 3600
    poll_interval: float = 1.0
    # Open runs one trainer process hosts before a new run of the same base
    # model gets a process of its own (1 = one process per run).
    runs_per_trainer: int = DEFAULT_RUNS_PER_TRAINER

    def __post_init__(self) -> None:
        check_runs_per_trainer(self.runs_per_trainer)


class ControlPlane:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.home
        self.store = Store(self.home)
        self.supervisor = Supervisor(
            self.store, self.home, idle_timeout=settings.idle_timeout,
            deploy_timeout=settings.deploy_timeout, poll_interval=settings.poll_interval,
        )
        self.registry = CheckpointRegistry(self.store, self.home)
        self.signer = FileSigner(load_or_create_secret(self.home), settings.url_ttl_seconds)
        self.checks = Checks(self.store, self.registry, self.home)
        self.views = Views(self.store, self.supervisor, self.checks)
        self.provisioning = Provisioning(self.home, self.store, self.supervisor, self.checks,
                                         self.views, create_wait=settings.create_wait,
                                         placement=Placement(self.store, self.supervisor,
                                                             settings.runs_per_trainer))
        self.checkpoints = CheckpointRequests(self.store, self.registry, self.signer,
                                              self.checks)
        self._device_classes: list[str] | None = None
        self._expiry_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.supervisor.start()
        await asyncio.to_thread(self.registry.sync)
        self._expiry_task = asyncio.create_task(self._expire_periodically())

    async def close(self) -> None:
        if self._expiry_task is not None:
            self._expiry_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry_task
        await self.supervisor.close()
        self.store.close()

    async def _expire_periodically(self) -> None:
        while True:
            await asyncio.sleep(30.0)
            try:
                await asyncio.to_thread(self.registry.expire)
            except Exception:
                logger.exception("checkpoint expiry failed")

    # -- capabilities ------------------------------------------------------------------------

    async def capabilities(self) -> ServerCapabilities:
        devices = await self._devices()
        models = [SupportedModel(model_name=entry.hf_id or entry.name,
                                 max_context_length=entry.max_context_length,
                                 device_classes=devices)
                  for entry in REGISTRY.values()]
        return ServerCapabilities(supported_models=models, device_classes=devices)

    async def _devices(self) -> list[str]:
        if self._device_classes is None:
            self._device_classes = ["cpu", *await asyncio.to_thread(cuda_device_names)]
        return self._device_classes


def cuda_device_names() -> list[str]:
    """Names of the CUDA devices this machine can run on (none without a driver).

    Asked in a short-lived child so the control plane never holds a CUDA
    context (or imports torch) itself.
    """
    if shutil.which("nvidia-smi") is None:
        return []
    script = ("import json, torch; print(json.dumps([torch.cuda.get_device_name(i) "
              "for i in range(torch.cuda.device_count())] if torch.cuda.is_available() "
              "else []))")
    try:
        result = subprocess.run([sys.executable, "-c", script], capture_output=True,
                                text=True, timeout=120, check=True)
        names = json.loads(result.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, OSError, ValueError, IndexError):
        return []
    return [str(name) for name in names]
