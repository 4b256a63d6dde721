"""The data home (``LOOPS_HOME``): state that outlives a run.

Layout (see ARCHITECTURE.md):

    <home>/models/<name>-v<recipe>/     built-in models (the tiny default)
    <home>/runs/<run_id>/weights/<name>/          trainer state checkpoints
    <home>/runs/<run_id>/sampler_weights/<name>/  adapters for sampling
    <home>/control_plane.sqlite          control-plane state
    <home>/logs/                         server logs
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "LOOPS_HOME"


def loops_home(override: str | os.PathLike[str] | None = None) -> Path:
    """The data home: the override, else ``$LOOPS_HOME``, else the user data dir."""
    if override is not None:
        return Path(override).expanduser().resolve()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser().resolve()
    from platformdirs import user_data_dir

    return Path(user_data_dir("loops-runner", appauthor=False)).resolve()
