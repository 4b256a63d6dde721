"""The built-in default model ``tiny``: where it lives and how it is installed.

No hub access exists on many machines (CI included), so the default model is
made by this package, offline: a small Qwen3 with its own byte-level BPE
tokenizer, pretrained on the task registry's chats. Pretraining takes minutes
on a CPU, so its result ships with the package (``tiny_pretrained/``, about
5 MB). This module is the registry's side of it: ``prepare`` copies the shipped
folder into the data home after checking every file's sha256.

The *build* (tokenizer training, architecture, pretraining on the task
corpus) lives apart, in :mod:`loops_runner.tiny_build`, because it needs the
task registry and the data layer, and the servers that load models must not
depend on those. ``scripts/pretrain_tiny.py`` refreshes the shipped folder and
``loops-runner models build tiny`` builds into a data home; both reproduce the
bytes on a machine of the same CPU class with the same library versions
(docs/tiny-model.md has the figures). Everything is a function of
``RECIPE_VERSION``: bump it whenever the build changes, and homes reinstall on
next use.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock

RECIPE_VERSION = 4
SHIPPED_DIR = Path(__file__).parent / "tiny_pretrained"
BUILD_INFO = "loops_tiny_build.json"


class TinyNotShippedError(RuntimeError):
    """No shipped build of this recipe version is installed with the package."""


def model_dir(home: Path) -> Path:
    return home / "models" / f"tiny-v{RECIPE_VERSION}"


def is_built(directory: Path) -> bool:
    info = directory / BUILD_INFO
    if not info.is_file():
        return False
    try:
        return json.loads(info.read_text()).get("recipe_version") == RECIPE_VERSION
    except (OSError, json.JSONDecodeError):
        return False


def prepare(home: Path) -> Path:
    """Install the shipped ``tiny`` into the data home unless it is already there;
    return its directory."""
    return install(home, install_shipped)


def install(home: Path, fill: Callable[[Path], None]) -> Path:
    """Put ``tiny`` into the data home by ``fill(staging_dir)`` unless it is there.

    Safe under concurrency: a file lock serialises installers, and the folder
    lands by an atomic rename, so a reader never sees a half-written model.
    """
    target = model_dir(home)
    if is_built(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if is_built(target):
            return target
        staging = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=target.parent))
        try:
            fill(staging)
            staging.chmod(0o755)
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def install_shipped(directory: Path) -> None:
    """Copy the shipped pretrained folder into ``directory``, refusing a damaged copy."""
    if not is_built(SHIPPED_DIR):
        raise TinyNotShippedError(
            f"no shipped build of tiny recipe version {RECIPE_VERSION} in {SHIPPED_DIR}; "
            "build it into the data home with `loops-runner models build tiny` (minutes "
            "on a CPU) or refresh the shipped copy with scripts/pretrain_tiny.py")
    info = build_info(SHIPPED_DIR)
    for name, digest in info["sha256"].items():
        data = (SHIPPED_DIR / name).read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise RuntimeError(f"the shipped tiny model file {SHIPPED_DIR / name} does not match "
                               "its recorded sha256; reinstall loops-runner or run "
                               "scripts/pretrain_tiny.py")
        (directory / name).write_bytes(data)
    shutil.copyfile(SHIPPED_DIR / BUILD_INFO, directory / BUILD_INFO)


def build_info(directory: Path) -> dict[str, Any]:
    return json.loads((directory / BUILD_INFO).read_text())
