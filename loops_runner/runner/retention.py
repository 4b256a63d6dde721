"""``checkpoints.keep_last``: periodic checkpoints beyond the last N leave the data home.

Only the checkpoints the runner's checkpointer saved (``step-<n>``, listed in
``run.json``) are candidates, never the newest (a resume starts there), never
the run's ``init_from`` source, never a checkpoint a recipe or user saved
under a name of its own. With them go the sampler weights the run's evaluators
saved for the same step (``eval-step-<n>``). A hosted service offers no
delete, so there the runner says so once and keeps everything.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from loops_runner.eval.evaluators import EVAL_WEIGHTS_PREFIX
from loops_runner.runner.run_record import CheckpointRecord
from loops_runner.storage.layout import checkpoint_dir
from loops_runner.wire.paths import parse_checkpoint_path


def beyond_last(checkpoints: list[CheckpointRecord], keep_last: int | None,
                protected: set[str]) -> list[CheckpointRecord]:
    """The checkpoints ``keep_last`` lets go (oldest first); never the newest one."""
    if keep_last is None or len(checkpoints) <= keep_last:
        return []
    return [c for c in checkpoints[:-keep_last] if c.path not in protected]


def remove_from_home(home: Path) -> Callable[[CheckpointRecord], bool]:
    """A remover for a data home this process can reach (the local backend)."""

    def remove(checkpoint: CheckpointRecord) -> bool:
        try:
            parsed = parse_checkpoint_path(checkpoint.path)
        except ValueError:
            return False  # not a path of the data home (a folder the user named): keep it
        folders = [checkpoint_dir(home, parsed.run_id, parsed.kind, parsed.name)]  # type: ignore[arg-type]
        # The evaluations' sampler weights up to this step go with it: nothing resumes
        # from them, and evaluating every few steps would otherwise pile them up.
        evals = checkpoint_dir(home, parsed.run_id, "sampler_weights", "any").parent
        folders += [f for f in sorted(evals.glob(f"{EVAL_WEIGHTS_PREFIX}*"))
                    if (step := _eval_step(f.name)) is not None and step <= checkpoint.step]
        for folder in folders:
            if folder.is_dir():
                # Moved aside first, so no reader ever sees a half-deleted checkpoint.
                doomed = folder.with_name(f".{folder.name}.removed")
                shutil.rmtree(doomed, ignore_errors=True)
                folder.rename(doomed)
                shutil.rmtree(doomed, ignore_errors=True)
        return True

    return remove


def _eval_step(name: str) -> int | None:
    number = name.removeprefix(EVAL_WEIGHTS_PREFIX)
    return int(number) if number.isdigit() else None
