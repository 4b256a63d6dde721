"""Where runs keep their files under the data home, and how ``bt://`` paths map there.

The ``bt://loops:<run_id>/<kind>/<name>`` forms are logical names: each server
resolves them against its own data home, so a client can never point a server
at an arbitrary location through them.

Weight sync between a trainer and its paired sampler (documented in
docs/weight-sync.md) also lives here because both sides need it:

* the trainer writes ``runs/<run>/sampler_weights/<name>/`` atomically, then
  replaces ``runs/<run>/LIVE.json`` = ``{"version", "name"}`` atomically
  (version 0 / name null = serve the base model);
* a paired sampler registers its URL in ``runs/<run>/paired_sampler.json``; the
  trainer then notifies it (``POST /internal/live``) and completes the publish
  only after the sampler acknowledged the swap. Without a registered sampler,
  or if the notify fails, the sampler still picks ``LIVE.json`` up by itself.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loops_runner.wire.names import check_storage_name

# The bt:// grammar is the wire's (the client builds the same strings); the
# servers keep importing it from here, next to where the paths map to folders.
from loops_runner.wire.paths import (  # noqa: F401
    CHECKPOINT_KINDS,
    BtPath,
    CheckpointKind,
    bt_path,
    parse_bt_path,
)

LIVE_FILE = "LIVE.json"
PAIRED_SAMPLER_FILE = "paired_sampler.json"
LOCAL_RUN_ID = "local"


def runs_root(home: Path) -> Path:
    return home / "runs"


def run_dir(home: Path, run_id: str) -> Path:
    return runs_root(home) / check_storage_name(run_id)


def checkpoint_dir(home: Path, run_id: str, kind: CheckpointKind, name: str) -> Path:
    return run_dir(home, run_id) / kind / check_storage_name(name)


def resolve_checkpoint_path(home: Path, path: str) -> Path:
    """A ``bt://`` path, ``file://`` URL or local directory -> an existing directory."""
    if path.startswith("bt://"):
        parsed = parse_bt_path(path)
        if parsed.kind not in CHECKPOINT_KINDS:
            raise ValueError(f"{path!r} does not name a weights checkpoint")
        directory = checkpoint_dir(home, parsed.run_id, parsed.kind, parsed.name)  # type: ignore[arg-type]
    elif path.startswith("file://"):
        directory = Path(path.removeprefix("file://"))
    elif "://" in path:
        raise ValueError(f"checkpoint path {path!r} uses a scheme this server cannot read")
    else:
        directory = Path(path).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    return directory


# -- atomic writes -------------------------------------------------------------


def atomic_write_json(path: Path, payload: Any) -> None:
    """Write JSON so readers see the old file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a staging directory; on success it replaces ``final`` in one step.

    An exception (or a kill) before the end leaves ``final`` untouched: the
    previous checkpoint of that name stays loadable.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.staging-", dir=final.parent))
    try:
        yield staging
        staging.chmod(0o755)
        if final.exists():
            # Two renames: the old folder moves aside, the new one takes its
            # name. Readers see old or new; a crash between the two leaves the
            # old one under the aside name, which cleanup_stale restores.
            aside = final.parent / f".{final.name}.old-{os.getpid()}"
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(final, aside)
            os.replace(staging, final)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def cleanup_stale(parent: Path) -> None:
    """Remove staging leftovers of interrupted saves; restore a moved-aside folder."""
    if not parent.is_dir():
        return
    for entry in parent.iterdir():
        if not entry.name.startswith("."):
            continue
        if ".staging-" in entry.name:
            shutil.rmtree(entry, ignore_errors=True)
        elif ".old-" in entry.name:
            original = parent / entry.name[1:].split(".old-")[0]
            if original.exists():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                os.replace(entry, original)


# -- weight sync ---------------------------------------------------------------


@dataclass(frozen=True)
class LivePointer:
    version: int
    name: str | None  # None: serve the base model

    def adapter_dir(self, home: Path, run_id: str) -> Path | None:
        if self.name is None:
            return None
        return checkpoint_dir(home, run_id, "sampler_weights", self.name)


def write_live(home: Path, run_id: str, version: int, name: str | None) -> None:
    atomic_write_json(run_dir(home, run_id) / LIVE_FILE, {"version": version, "name": name})


def read_live(home: Path, run_id: str) -> LivePointer:
    payload = read_json(run_dir(home, run_id) / LIVE_FILE)
    if not isinstance(payload, dict):
        return LivePointer(0, None)
    return LivePointer(int(payload.get("version", 0)), payload.get("name"))


def register_paired_sampler(home: Path, run_id: str, url: str) -> None:
    atomic_write_json(run_dir(home, run_id) / PAIRED_SAMPLER_FILE, {"url": url})


def paired_sampler_url(home: Path, run_id: str) -> str | None:
    payload = read_json(run_dir(home, run_id) / PAIRED_SAMPLER_FILE)
    return payload.get("url") if isinstance(payload, dict) else None


# -- checkpoint manifests (the registry's source of truth) ---------------------

MANIFEST_FILE = "checkpoint.json"
TARGET_BY_KIND: dict[str, str] = {"weights": "trainer", "sampler_weights": "sampler"}


def checkpoint_api_id(run_id: str, kind: CheckpointKind, name: str) -> str:
    """A globally unique, stable API id for (run, kind, name).

    Stable so that saving a name again overwrites one registry entry.
    """
    import hashlib

    digest = hashlib.sha256(f"{run_id}\0{kind}\0{name}".encode()).hexdigest()[:20]
    return f"ckpt-{digest}"


def iter_checkpoint_manifests(home: Path, run_id: str | None = None) -> Iterator[dict[str, Any]]:
    """Every readable ``checkpoint.json`` under the data home (or one run)."""
    roots = [run_dir(home, run_id)] if run_id else sorted(runs_root(home).glob("*"))
    for root in roots:
        for kind in CHECKPOINT_KINDS:
            for manifest_path in sorted((root / kind).glob(f"*/{MANIFEST_FILE}")):
                payload = read_json(manifest_path)
                if isinstance(payload, dict):
                    yield payload


class CheckpointIntegrityError(ValueError):
    """A checkpoint's files do not match its manifest: refused, never half-loaded."""


def manifest_checksums(directory: Path) -> tuple[dict[str, Any] | None, dict[str, str] | None]:
    """A checkpoint's manifest and its per-file sha256s; (None, None) for a plain PEFT folder.

    A manifest that is present but unreadable, or lists no checksums, means a
    damaged checkpoint: refusing it beats loading its files unverified.
    """
    path = directory / MANIFEST_FILE
    if not path.exists():
        return None, None
    try:
        manifest = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CheckpointIntegrityError(
            f"checkpoint manifest {path} is unreadable (corrupted): {exc}") from None
    checksums = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(checksums, dict) or not all(
            isinstance(value, str) for value in checksums.values()):
        raise CheckpointIntegrityError(
            f"checkpoint manifest {path} has no per-file sha256 list ('files')")
    return manifest, checksums


def verified_bytes(directory: Path, relative: str, checksums: dict[str, str] | None) -> bytes:
    """A checkpoint file's bytes, checked against the manifest's sha256 when there is one."""
    import hashlib

    path = directory / relative
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {directory} has no {relative}")
    data = path.read_bytes()
    if checksums is not None:
        expected = checksums.get(relative)
        if expected is None:
            raise CheckpointIntegrityError(
                f"checkpoint file {path} has no sha256 in its manifest (modified manifest)")
        if hashlib.sha256(data).hexdigest() != expected:
            raise CheckpointIntegrityError(
                f"checkpoint file {path} does not match its manifest checksum (corrupted or "
                "modified)")
    return data
