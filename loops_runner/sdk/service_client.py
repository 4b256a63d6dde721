"""``ServiceClient``: a Loops session, the entry point of every script.

Creating one opens a session on the control plane (``POST /v1/loops/sessions``);
it then provisions runs (a trainer, and the paired sampler that follows its
published weights) and standalone samplers, and reads the checkpoint
registry. ``ServiceClient.local(...)`` binds to a trainer and a sampler that
are already running, with no control plane at all (spec 8).

Configuration: ``api_key`` defaults to ``BASETEN_API_KEY``, ``base_url`` to
``LOOPS_BASE_URL`` (else Baseten's public API), ``reuse_from_session_id`` to
``LOOPS_REUSE_FROM_SESSION_ID`` (and ``reuse_from_run_id`` to
``LOOPS_REUSE_FROM_RUN_ID``), ``team`` to ``LOOPS_TEAM``,
``availability_model`` to ``LOOPS_AVAILABILITY_MODEL`` and each create's
``scope`` to ``BASETEN_LOOPS_SCOPE``; an explicit keyword always wins. The
options beyond the documented signatures are those of the Baseten SDK 0.32,
with its names and meaning; where the control plane cannot honour one it
refuses it with a message naming the option (docs/porting.md).

``reconnect`` is this client's own extension (the runner's local backend
passes it): a function giving the control plane's current URL and key, and
starting it again when it died. With it, a call that cannot reach the control
plane reconnects and is sent again (``loops_runner.sdk.control_plane``), and
the training and sampling clients made here do the same, so a restarted
local control plane keeps the session and its runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from loops_runner.sdk import checkpoint_downloads as downloads
from loops_runner.sdk import options
from loops_runner.sdk.control_plane import DEFAULT_BASE_URL, ControlPlaneClient, Reconnect
from loops_runner.sdk.errors import UnsupportedOperationError
from loops_runner.sdk.provisioners import (
    ControlPlaneProvisioner,
    DirectProvisioner,
    Provisioner,
    SamplerSpec,
    TrainerSpec,
)
from loops_runner.sdk.sampling_client import SamplingClient
from loops_runner.sdk.training_client import TrainingClient
from loops_runner.sdk.twins import in_thread
from loops_runner.sdk.types import CheckpointDownload
from loops_runner.wire import (
    AvailabilityModel,
    Checkpoint,
    CheckpointFilesResponse,
    CheckpointTarget,
    SamplerScope,
    ServerCapabilities,
    TrainerScope,
    WandbConfig,
)

logger = logging.getLogger("loops_runner.sdk")
# The create_lora_training_client options a from-state create also takes.
_FROM_STATE_OPTIONS = frozenset({"seed", "timeout", "ready_timeout", "wandb_config",
                                 "max_seq_len", "sampler_timeout", "with_sampler", "name",
                                 "sampler_num_replicas", "scope"})
_env = options.env


class ServiceClient:
    """A Loops session; makes training and sampling clients.

    ``session_id`` is the control plane's id of this session (``"local"`` for
    local clients), ``availability_model`` applies to everything it provisions,
    and ``control_plane`` (this client's own extension) gives the control
    plane's routes (None for ``local``).
    """

    session_id: str
    availability_model: AvailabilityModel
    control_plane: ControlPlaneClient | None

    def __init__(
        self,
        training_project_id: str | None = None,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        reuse_from_session_id: str | None = None,
        reuse_from_run_id: str | None = None,
        team: str | None = None,
        availability_model: AvailabilityModel | str | None = None,
        reconnect: Reconnect | None = None,
    ) -> None:
        api_key = api_key if api_key is not None else _env("BASETEN_API_KEY")
        base_url = (base_url or _env("LOOPS_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        # One availability for the whole script: it applies to every trainer
        # and sampler this client provisions.
        availability = options.availability_model(availability_model)
        if availability is AvailabilityModel.spot:
            logger.warning("trainers and samplers of this client run on spot capacity: a spot "
                           "run stops when its GPUs are reclaimed; save checkpoints")
        control_plane = ControlPlaneClient(base_url, api_key, reconnect=reconnect)
        team = team or _env(options.TEAM_ENV)
        if team is not None:
            control_plane.team_id = control_plane.team_id_of(team)
        self._use(ControlPlaneProvisioner(
            control_plane, training_project_id=training_project_id,
            availability_model=availability,
            reuse_from_run_id=reuse_from_run_id if reuse_from_run_id is not None
            else _env("LOOPS_REUSE_FROM_RUN_ID"),
            reuse_from_session_id=reuse_from_session_id if reuse_from_session_id is not None
            else _env("LOOPS_REUSE_FROM_SESSION_ID"),
            reconnect=reconnect))

    def _use(self, provisioner: Provisioner) -> None:
        """Every create goes through ``provisioner`` from now on (chosen once)."""
        self._provisioner = provisioner
        self.session_id = provisioner.session_id
        self.availability_model = provisioner.availability_model
        self.control_plane = provisioner.control_plane

    @classmethod
    def local(cls, *, trainer_url: str, sampler_url: str) -> ServiceClient:
        """Bind to a running trainer and sampler; no control plane, no API key.

        Training and sampling work; saving, loading, publishing and the
        checkpoint registry need a run and a control plane, and are refused.
        """
        return _DirectServiceClient(DirectProvisioner(trainer_url, sampler_url))

    @property
    def base_url(self) -> str:
        """The control plane's URL; after a reconnect, where it listens now."""
        return self._provisioner.base_url

    def _cp(self, what: str) -> ControlPlaneClient:
        control_plane = self.control_plane
        if control_plane is None:
            raise UnsupportedOperationError(
                "not available on ServiceClient.local(...): it has no control plane; use "
                "ServiceClient(base_url=...) for checkpoints, capabilities and resumes",
                operation=what)
        return control_plane

    # -- training clients ------------------------------------------------------------

    @options.positional_order(
        ("base_model", "rank", "seed", "timeout", "ready_timeout", "wandb_config"),
        ("base_model", "rank", "replicas", "seed", "max_seq_len", "timeout"), shared=2)
    def create_lora_training_client(
        self,
        base_model: str,
        rank: int = 32,
        seed: int | None = None,
        timeout: float = 600.0,
        ready_timeout: float = 3600.0,
        wandb_config: WandbConfig | None = None,
        *,
        replicas: int = 1,
        max_seq_len: int | None = None,
        sampler_timeout: float | None = None,
        with_sampler: bool = False,
        name: str | None = None,
        sampler_num_replicas: int | None = None,
        scope: TrainerScope | str | None = None,
        base_checkpoint: str | None = None,
    ) -> TrainingClient:
        """Provision a run (trainer + paired sampler) and return its connected client.

        Positional order: ``(base_model, rank, seed, timeout, ready_timeout,
        wandb_config)`` as documented (spec/service-client.md); the Baseten
        SDK's code reads ``(base_model, rank, replicas, seed, max_seq_len,
        timeout, ...)``. Only ``base_model`` and ``rank`` mean the same by
        position; pass the rest by keyword (a positional one warns).

        ``timeout`` bounds each HTTP call, ``ready_timeout`` the wait for the
        trainer to come up. ``seed`` goes to the control plane and to the
        trainer's ``init_trainer_server`` (reproducible adapter init).
        ``wandb_config`` streams metrics to W&B. The keyword-only options are
        the Baseten SDK's: ``replicas`` trainer copies (more than one gets
        fresh capacity, no reuse), ``max_seq_len`` the longest sequence,
        ``sampler_timeout`` each paired ``sample`` call's read timeout,
        ``with_sampler`` creates the paired sampler now rather than at the
        first sample, ``name`` the run's display name,
        ``sampler_num_replicas`` the paired sampler's replicas, ``scope``
        where the trainer runs (``BASETEN_LOOPS_SCOPE``), ``base_checkpoint``
        a merged ``hf://org/repo[@rev]`` to start from.
        """
        return self._provision(base_model, rank=rank, seed=seed, timeout=timeout,
                               ready_timeout=ready_timeout, wandb_config=wandb_config,
                               max_seq_len=max_seq_len, name=name, with_sampler=with_sampler,
                               sampler_timeout=sampler_timeout, replicas=replicas,
                               sampler_num_replicas=sampler_num_replicas, scope=scope,
                               base_checkpoint=base_checkpoint)

    create_lora_training_client_async = in_thread(create_lora_training_client)

    def _provision(self, base_model: str, *, rank: int, seed: int | None = None,
                   timeout: float = 600.0, ready_timeout: float = 3600.0,
                   wandb_config: WandbConfig | None = None, max_seq_len: int | None = None,
                   name: str | None = None, with_sampler: bool = False,
                   sampler_timeout: float | None = None, replicas: int = 1,
                   sampler_num_replicas: int | None = None,
                   scope: TrainerScope | str | None = None, base_checkpoint: str | None = None,
                   checkpoint_path: str | None = None) -> TrainingClient:
        if not base_model:
            raise ValueError("base_model must name a model")
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        options.check_count(replicas, "replicas")
        options.check_count(sampler_num_replicas, "sampler_num_replicas")
        return self._provisioner.training_client(TrainerSpec(
            base_model=base_model, rank=rank, seed=seed, timeout=timeout,
            ready_timeout=ready_timeout, wandb_config=wandb_config, max_seq_len=max_seq_len,
            name=name, with_sampler=with_sampler, sampler_timeout=sampler_timeout,
            replicas=replicas, sampler_num_replicas=sampler_num_replicas,
            scope=options.trainer_scope(scope), base_checkpoint=base_checkpoint,
            checkpoint_path=checkpoint_path))

    def create_training_client_from_state(self, path: str,
                                          user_metadata: dict[str, Any] | None = None,
                                          replicas: int = 1,
                                          **provision: Any) -> TrainingClient:
        """A new run whose adapter is loaded from ``path``; the optimizer starts fresh.

        ``provision`` (this client's extension) takes the keyword options of
        ``create_lora_training_client`` other than ``base_model`` and ``rank``,
        which come from the checkpoint: ``name``, ``max_seq_len``, ``scope``,
        ``with_sampler``, ``sampler_num_replicas``, ``seed``, the timeouts and
        ``wandb_config``, so a resumed run is provisioned like the first one.
        """
        return self._from_state(path, with_optimizer=False, replicas=replicas,
                                provision=provision)

    def create_training_client_from_state_with_optimizer(
            self, path: str, user_metadata: dict[str, Any] | None = None,
            replicas: int = 1, **provision: Any) -> TrainingClient:
        """A new run resuming ``path`` exactly: adapter, optimizer moments and step.

        ``provision``: as in ``create_training_client_from_state``.
        """
        return self._from_state(path, with_optimizer=True, replicas=replicas,
                                provision=provision)

    create_training_client_from_state_async = in_thread(create_training_client_from_state)

    create_training_client_from_state_with_optimizer_async = in_thread(
        create_training_client_from_state_with_optimizer)

    def _from_state(self, path: str, *, with_optimizer: bool, replicas: int,
                    provision: dict[str, Any]) -> TrainingClient:
        unknown = sorted(set(provision) - _FROM_STATE_OPTIONS)
        if unknown:
            raise TypeError(f"create_training_client_from_state got unexpected keyword "
                            f"argument(s) {', '.join(unknown)}; it also takes "
                            f"{', '.join(sorted(_FROM_STATE_OPTIONS))}")
        options.check_count(replicas, "replicas")
        control_plane = self._cp("create_training_client_from_state")
        checkpoint = control_plane.checkpoint_by_path(path)
        client = self._provision(checkpoint.base_model, rank=checkpoint.lora_adapter_config.rank,
                                 replicas=replicas, checkpoint_path=path, **provision)
        try:
            load = client.load_state_with_optimizer if with_optimizer else client.load_state
            load(path).result()
        except BaseException:
            client.close()
            raise
        return client

    # -- sampling clients ------------------------------------------------------------

    def create_sampling_client(self, base_model: str | None = None,
                               timeout: float | None = None,
                               ready_timeout: float = 3600.0,
                               model_path: str | None = None, *,
                               max_seq_len: int | None = None,
                               num_replicas: int | None = None,
                               scope: SamplerScope | str | None = None) -> SamplingClient:
        """Provision a standalone sampler for ``base_model`` or the checkpoint ``model_path``.

        Pass exactly one of them. ``model_path`` is a sampler checkpoint
        (``bt://loops:<run>/sampler_weights/<name>``), also of a run that has
        ended; its base model is read from the checkpoint registry.
        ``timeout`` is each ``sample`` call's read timeout: ``None`` (the
        default, as in the Baseten SDK) waits for the server, which ends a
        request itself. As in the Baseten SDK, ``max_seq_len`` is the longest
        prompt, ``num_replicas`` the sampler's replicas and ``scope`` where it
        runs.
        """
        if (base_model is None) == (model_path is None):
            raise ValueError("pass exactly one of base_model and model_path")
        if base_model is not None and not base_model:
            raise ValueError("base_model must name a model")
        options.check_count(num_replicas, "num_replicas")
        return self._provisioner.sampling_client(SamplerSpec(
            base_model=base_model, model_path=model_path, timeout=timeout,
            ready_timeout=ready_timeout, max_seq_len=max_seq_len, num_replicas=num_replicas,
            scope=options.sampler_scope(scope)))

    create_sampling_client_async = in_thread(create_sampling_client)

    # -- control-plane reads ---------------------------------------------------------

    def get_server_capabilities(self) -> ServerCapabilities:
        """The base models the control plane supports and where it can run them."""
        return self._cp("get_server_capabilities").capabilities()

    get_server_capabilities_async = in_thread(get_server_capabilities)

    def list_checkpoints(self, run_id: str) -> list[Checkpoint]:
        """The checkpoints saved by ``run_id`` (from the registry, not the trainer)."""
        return self._cp("list_checkpoints").list_checkpoints(run_id)

    list_checkpoints_async = in_thread(list_checkpoints)

    def get_checkpoint_by_path(self, path: str) -> Checkpoint:
        """The registry entry of the ``bt://`` path (base model, rank, step); ValueError if none."""
        return self._cp("get_checkpoint_by_path").checkpoint_by_path(path)

    @options.positional_order(("checkpoint_id", "page_size", "page_token"),
                              ("checkpoint_id", "name", "run_id"), shared=1)
    def get_checkpoint_archive_url(
            self, checkpoint_id: str | None = None, page_size: int = 1000, page_token: int = 0,
            *, name: str | None = None, run_id: str | None = None,
            target: CheckpointTarget | str | None = None) -> CheckpointFilesResponse:
        """Signed URLs of a checkpoint's files, one page (``next_page_token`` for more).

        Positional order: ``(checkpoint_id, page_size, page_token)`` as
        documented; the Baseten SDK's code reads ``(checkpoint_id, name,
        run_id, target, page_size, page_token)``. Pass everything after
        ``checkpoint_id`` by keyword (a positional one warns).
        """
        control_plane = self._cp("get_checkpoint_archive_url")
        resolved = downloads.resolve_id(control_plane, checkpoint_id, name, run_id, target)
        return downloads.files_page(control_plane, resolved, page_size, page_token)

    get_checkpoint_archive_url_async = in_thread(get_checkpoint_archive_url)

    def download_checkpoint(self, checkpoint_id: str | None = None, *, dest_dir: str,
                            name: str | None = None, run_id: str | None = None,
                            target: CheckpointTarget | str | None = None,
                            progress: Callable[[int, int], None] | None = None,
                            ) -> CheckpointDownload:
        """Write a checkpoint's files into the empty directory ``dest_dir``.

        ``progress(bytes_so_far, total_bytes)`` is called as the files arrive.
        """
        control_plane = self._cp("download_checkpoint")
        resolved = downloads.resolve_id(control_plane, checkpoint_id, name, run_id, target)
        return downloads.download(control_plane, resolved, dest_dir, progress)

    download_checkpoint_async = in_thread(download_checkpoint)

    def __repr__(self) -> str:
        return f"<ServiceClient session={self.session_id} {self._provisioner.describe()}>"


class _DirectServiceClient(ServiceClient):
    """What ``ServiceClient.local`` returns: the same client over a
    :class:`DirectProvisioner`, made without opening a control-plane session."""

    def __init__(self, provisioner: DirectProvisioner) -> None:
        self._use(provisioner)
