"""Writes that readers see whole or not at all: JSON files and whole folders.

A checkpoint folder is written into a staging folder beside its final place
and renamed into it, so a crash or kill mid-save leaves the previous folder of
that name loadable. What such an interruption leaves is tidied by the next
save (``cleanup_stale``) or, for a reader, only put back (``restore_moved_aside``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


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


def restore_moved_aside(parent: Path) -> None:
    """Undo a save killed between its two renames (old folder aside, new not yet in place).

    Staging folders are left alone: another save may be writing them right now.
    """
    if not parent.is_dir():
        return
    for entry in parent.iterdir():
        if entry.name.startswith(".") and ".old-" in entry.name:
            original = parent / entry.name[1:].split(".old-")[0]
            if not original.exists():
                entry.replace(original)
