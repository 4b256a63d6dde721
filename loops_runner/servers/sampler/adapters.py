"""Which weights serve a request: the base model, a run's live adapter, or a pinned checkpoint.

Spec 6.2 (and Q4: no routing header means the base model):

==========================  ====================================================
headers                     weights
==========================  ====================================================
none                        base model (version 0)
``X-Checkpoint-Path``       that checkpoint (loaded on demand, a few cached)
``X-Min-Policy-Version``    the run's live adapter once ``live >= floor``; held up
                            to ``floor_wait_s`` for a swap, then ``BehindFloor`` (408)
both                        live if ``live >= floor``, else the checkpoint
==========================  ====================================================

Live adapters follow the weight-sync contract (``storage.weight_sync``):
``LIVE.json`` of a run names the published folder and its version; the trainer also POSTs
``/internal/live`` (``publish`` here), answered after the swap. ``LIVE.json`` is
the source of truth: a notification is a hint to read it now, and a watcher
re-reads it whenever its stat signature changes. A swap replaces the live
adapter object; requests already running keep the object they started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loops_runner.models.registry import canonical_model_id
from loops_runner.servers.sampler.engine import Engine
from loops_runner.servers.sampler.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterError
from loops_runner.storage import atomic, layout, manifests, weight_sync
from loops_runner.wire.names import check_storage_name
from loops_runner.wire.paths import bt_path, parse_bt_path

logger = logging.getLogger("loops_runner.sampler.adapters")

LIVE_MODEL_ID = "default"


class BadCheckpointError(ValueError):
    """The named checkpoint cannot be served (answered 400, never retried)."""


class BehindFloorError(Exception):
    """The live adapter stayed behind the requested floor (answered 408, retried)."""

    def __init__(self, run_id: str, live: int, floor: int, waited: float) -> None:
        super().__init__(
            f"run {run_id!r} serves policy version {live}, behind the requested minimum "
            f"{floor} (waited {waited:.1f}s for a newer publish)")
        self.run_id, self.live, self.floor = run_id, live, floor


@dataclass(frozen=True)
class ServedWeights:
    adapter: Any  # engine handle; None = base model
    version: int
    model: str  # the id a response names: base id, "default" or a checkpoint path
    run_id: str | None = None


@dataclass(frozen=True)
class ServedModel:
    """A ``GET /v1/models`` entry; ``aliases`` are other names requests may use for it."""

    id: str
    parent: str | None
    aliases: tuple[str, ...] = ()


@dataclass
class _Live:
    version: int = 0
    name: str | None = None
    adapter: Any = None
    signature: tuple[int, ...] | None = None
    loaded_dir_signature: tuple[int, ...] | None = None
    error: str | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


@dataclass
class _Pinned:
    weights: ServedWeights
    signature: tuple[int, ...]


def _stat_signature(path: Path) -> tuple[int, ...] | None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return (info.st_ino, info.st_mtime_ns, info.st_size)


def _folder_signature(directory: Path) -> tuple[int, ...] | None:
    """Changes whenever the folder is replaced (atomic_directory) or rewritten."""
    folder = _stat_signature(directory)
    weights = _stat_signature(directory / "adapter_model.safetensors")
    if folder is None or weights is None:
        return None
    return (*folder, *weights)


class WeightStore:
    def __init__(self, engine: Engine, home: Path, *, base_model_id: str, default_run: str,
                 floor_wait_s: float = 25.0, poll_interval_s: float = 0.2,
                 pinned_cache_size: int = 4, live_names: tuple[str, ...] = ()) -> None:
        self.engine = engine
        self.home = home
        self.base_model_id = base_model_id
        self.default_run = check_storage_name(default_run)
        self.floor_wait_s = floor_wait_s
        self.poll_interval_s = poll_interval_s
        self.pinned_cache_size = pinned_cache_size
        self._base_aliases = {base_model_id}
        try:
            self._canonical_base = canonical_model_id(base_model_id, home)
            self._base_aliases.add(self._canonical_base)
        except ValueError:
            self._canonical_base = base_model_id
        # The default run's live adapter: listed under the first of ``live_names``
        # (``serve-checkpoint`` passes the checkpoint's readable name), else as
        # ``default`` (spec 6.5); every one of them and ``default`` is accepted.
        self.live_model_id = live_names[0] if live_names else LIVE_MODEL_ID
        self._live_aliases = tuple(dict.fromkeys((*live_names, LIVE_MODEL_ID)))
        self._live: dict[str, _Live] = {}
        self._pinned: OrderedDict[str, _Pinned] = OrderedDict()
        self._pinned_loads: dict[str, asyncio.Task[_Pinned]] = {}

    # -- selection (spec 6.2) ------------------------------------------------------

    def run_for(self, header_run: str | None) -> str:
        if header_run is None or header_run == "":
            return self.default_run
        try:
            return check_storage_name(header_run)
        except ValueError as exc:
            raise BadCheckpointError(f"X-Run-Id: {exc}") from exc

    def base(self) -> ServedWeights:
        return ServedWeights(None, 0, self.base_model_id)

    async def select(self, *, run_id: str | None, checkpoint_path: str | None,
                     min_version: int | None) -> ServedWeights:
        if not min_version:  # the SDK never sends 0; 0 would mean "any version"
            if checkpoint_path:
                return await self.pinned(checkpoint_path)
            return self.base()
        run = self.run_for(run_id)
        live = await self._live_state(run)
        if live.version >= min_version:
            return self._live_weights(run, live)
        if checkpoint_path:
            return await self.pinned(checkpoint_path)
        return await self._wait_for_floor(run, min_version)

    async def _wait_for_floor(self, run: str, floor: int) -> ServedWeights:
        started = time.monotonic()
        deadline = started + self.floor_wait_s
        while True:
            live = await self._live_state(run)
            await self._refresh(run, live)
            if live.version >= floor:
                return self._live_weights(run, live)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BehindFloorError(run, live.version, floor, time.monotonic() - started)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(live.changed.wait(),
                                       timeout=min(remaining, self.poll_interval_s))

    def _live_weights(self, run: str, live: _Live) -> ServedWeights:
        if live.adapter is None or live.name is None:
            model = self.base_model_id
        elif run == self.default_run:
            model = self.live_model_id
        else:
            model = bt_path(run, "sampler_weights", live.name)
        return ServedWeights(live.adapter, live.version, model, run)

    # -- live adapters ---------------------------------------------------------------

    async def _live_state(self, run: str) -> _Live:
        live = self._live.get(run)
        if live is None:
            live = self._live[run] = _Live()
            await self._refresh(run, live)
        return live

    async def live_version(self, header_run: str | None) -> int:
        run = self.run_for(header_run)
        live = await self._live_state(run)
        await self._refresh(run, live)
        return live.version

    async def _refresh(self, run: str, live: _Live) -> None:
        """Re-read LIVE.json if its stat signature changed since the last read."""
        pointer_file = layout.run_dir(self.home, run) / weight_sync.LIVE_FILE
        signature = _stat_signature(pointer_file)
        if signature is not None and signature == live.signature:
            return
        async with live.lock:
            signature = _stat_signature(pointer_file)
            if signature is not None and signature == live.signature:
                return
            pointer = weight_sync.read_live(self.home, run)
            try:
                await self._apply(run, live, pointer.version, pointer.name)
            except (AdapterError, FileNotFoundError) as exc:
                logger.error("run %s: cannot load live adapter %s (v%d): %s", run,
                             pointer.name, pointer.version, exc)
            live.signature = signature

    async def _apply(self, run: str, live: _Live, version: int, name: str | None) -> None:
        """Make (version, name) the run's live weights; no-op if already so."""
        if name is None:
            changed = live.version != version or live.adapter is not None
            live.version, live.name, live.adapter = version, None, None
            live.loaded_dir_signature, live.error = None, None
            if changed:
                logger.info("run %s: live adapter dropped (version %d, base model)", run, version)
                live.notify()
            return
        check_storage_name(name)
        directory = layout.checkpoint_dir(self.home, run, "sampler_weights", name)
        folder = _folder_signature(directory)
        if folder is None:
            raise FileNotFoundError(f"{directory} has no adapter")
        if (live.version, live.name, live.loaded_dir_signature) == (version, name, folder):
            return
        started = time.monotonic()
        key = f"live:{run}:{name}:v{version}"
        try:
            adapter = await asyncio.to_thread(self._load_checked, directory, key)
        except AdapterError as exc:
            live.error = str(exc)
            raise
        # The swap: one assignment each, between awaits, so a request sees the
        # old (version, adapter) pair or the new one, never a mix.
        live.version, live.name, live.adapter = version, name, adapter
        live.loaded_dir_signature, live.error = folder, None
        logger.info("run %s: live adapter %s version %d loaded in %.3fs", run, name, version,
                    time.monotonic() - started)
        live.notify()

    async def publish(self, run_id: str, version: int, name: str | None) -> int:
        """``POST /internal/live``: load and swap now; return the live version."""
        run = check_storage_name(run_id)
        if name is not None:
            check_storage_name(name)
        live = self._live.get(run) or self._live.setdefault(run, _Live())
        pointer_file = layout.run_dir(self.home, run) / weight_sync.LIVE_FILE
        async with live.lock:
            # LIVE.json as it was when the notice came (the trainer writes it
            # first): only a later change to it makes the watcher re-read it.
            signature = _stat_signature(pointer_file)
            await self._apply(run, live, version, name)
            live.signature = signature
        return live.version

    async def watch(self) -> None:
        """Background task: pick up LIVE.json changes of every run seen so far."""
        while True:
            await asyncio.sleep(self.poll_interval_s)
            for run, live in list(self._live.items()):
                try:
                    await self._refresh(run, live)
                except Exception:  # keep watching the other runs
                    logger.exception("run %s: refreshing the live adapter failed", run)

    async def prime(self) -> None:
        """Read the default run's live pointer at startup."""
        await self._live_state(self.default_run)

    # -- pinned checkpoints ------------------------------------------------------------

    def _checkpoint_dir(self, path: str) -> Path:
        if not path.startswith("bt://"):
            raise BadCheckpointError(
                f"X-Checkpoint-Path {path!r}: only bt://loops:<run>/sampler_weights/<name> "
                "paths are served")
        try:
            parsed = parse_bt_path(path)
        except ValueError as exc:
            raise BadCheckpointError(f"X-Checkpoint-Path: {exc}") from exc
        if parsed.kind != "sampler_weights":
            raise BadCheckpointError(
                f"X-Checkpoint-Path {path!r} names a {parsed.kind} checkpoint; a sampler serves "
                "sampler_weights checkpoints (save_weights_for_sampler)")
        return layout.checkpoint_dir(self.home, parsed.run_id, "sampler_weights", parsed.name)

    async def pinned(self, path: str) -> ServedWeights:
        directory = self._checkpoint_dir(path)
        key = path.rstrip("/")
        signature = _folder_signature(directory)
        if signature is None:
            raise BadCheckpointError(f"unknown checkpoint {path!r}: no adapter was saved there")
        cached = self._pinned.get(key)
        if cached is not None and cached.signature == signature:
            self._pinned.move_to_end(key)
            return cached.weights
        task = self._pinned_loads.get(key)
        if task is None:
            task = asyncio.ensure_future(self._load_pinned(key, directory, signature))
            self._pinned_loads[key] = task
            task.add_done_callback(lambda _t: self._pinned_loads.pop(key, None))
        entry = await asyncio.shield(task)
        return entry.weights

    async def _load_pinned(self, key: str, directory: Path,
                           signature: tuple[int, ...]) -> _Pinned:
        manifest = atomic.read_json(directory / manifests.MANIFEST_FILE)
        step = manifest.get("step") if isinstance(manifest, dict) else None
        version = step if isinstance(step, int) and step >= 0 else 0
        try:
            adapter = await asyncio.to_thread(self._load_checked, directory, f"pinned:{key}")
        except (AdapterError, FileNotFoundError) as exc:
            raise BadCheckpointError(f"checkpoint {key!r} cannot be served: {exc}") from exc
        entry = _Pinned(ServedWeights(adapter, version, key), signature)
        self._pinned[key] = entry
        self._pinned.move_to_end(key)
        while len(self._pinned) > self.pinned_cache_size:
            # Requests still running keep their adapter object alive until done.
            self._pinned.popitem(last=False)
        return entry

    def _load_checked(self, directory: Path, key: str) -> Any:
        try:
            manifest, checksums = manifests.manifest_checksums(directory)
            for relative in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
                if checksums is not None and (directory / relative).is_file():
                    manifests.verified_bytes(directory, relative, checksums)
        except manifests.CheckpointIntegrityError as exc:
            raise AdapterError(str(exc)) from exc
        if isinstance(manifest, dict) and manifest.get("base_model"):
            declared = str(manifest["base_model"])
            try:
                canonical = canonical_model_id(declared, self.home)
            except ValueError:
                canonical = declared
            if canonical not in self._base_aliases and declared not in self._base_aliases:
                raise AdapterError(f"adapter was trained on {declared!r}, this sampler serves "
                                   f"{self.base_model_id!r}")
        return self.engine.load_adapter(directory, key)

    # -- listing (GET /v1/models) and OpenAI model names ------------------------------------

    def model_entries(self) -> list[ServedModel]:
        """Base first, then the default run's live adapter (``live_model_id``),
        then other loaded adapters under their checkpoint paths."""
        base_aliases = tuple(sorted(self._base_aliases - {self.base_model_id}))
        entries = [ServedModel(self.base_model_id, None, base_aliases)]
        seen = {self.base_model_id}
        default = self._live.get(self.default_run)
        if default is not None and default.adapter is not None:
            aliases = tuple(a for a in self._live_aliases if a != self.live_model_id)
            if default.name:
                aliases += (bt_path(self.default_run, "sampler_weights", default.name),)
            entries.append(ServedModel(self.live_model_id, self.base_model_id, aliases))
            seen.add(self.live_model_id)
        others = [bt_path(run, "sampler_weights", live.name)
                  for run, live in self._live.items()
                  if run != self.default_run and live.adapter is not None and live.name]
        for model_id in [*others, *reversed(self._pinned)]:
            if model_id not in seen:
                entries.append(ServedModel(model_id, self.base_model_id))
                seen.add(model_id)
        return entries

    def is_base(self, model: str) -> bool:
        return model in self._base_aliases

    async def for_model(self, model: str, header_run: str | None) -> ServedWeights | None:
        """Weights named by an OpenAI ``model`` field, or None if no such model."""
        if self.is_base(model):
            return self.base()
        if model in self._live_aliases:
            run = self.run_for(header_run)
            live = await self._live_state(run)
            return self._live_weights(run, live) if live.adapter is not None else None
        if model.startswith("bt://"):
            try:
                return await self.pinned(model)
            except BadCheckpointError:
                return None
        return None

