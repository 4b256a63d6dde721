"""Where runs keep their files under the data home, and how ``bt://`` paths map there.

The ``bt://loops:<run_id>/<kind>/<name>`` forms are logical names
(``loops_runner.wire.paths``): each server resolves them against its own data
home here, so a client can never point a server at an arbitrary location
through them.
"""

from __future__ import annotations

from pathlib import Path

from loops_runner.wire.names import check_storage_name
from loops_runner.wire.paths import CheckpointKind, parse_checkpoint_path

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
        parsed = parse_checkpoint_path(path)
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
