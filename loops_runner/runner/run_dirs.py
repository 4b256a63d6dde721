"""Deterministic run-dir names: the same command always maps to the same folder.

That is what makes "re-run the killed command" resume it. Names come from the
command-line overrides, made safe for a file system and bounded in length.
"""

from __future__ import annotations

import hashlib
import re

from omegaconf import OmegaConf

MAX_NAME = 120
RESOLVER = "loops_run_dirname"


def run_dirname(override_dirname: str) -> str:
    if not override_dirname:
        return "default"
    safe = re.sub(r"[^A-Za-z0-9._=,+-]", "_", override_dirname)
    if len(safe) <= MAX_NAME:
        return safe
    digest = hashlib.sha256(override_dirname.encode()).hexdigest()[:12]
    return f"{safe[: MAX_NAME - 13]}-{digest}"


def register() -> None:
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, run_dirname)
