"""The ``bt://loops:<run_id>/<kind>/<name>`` checkpoint grammar (spec 5).

Logical names, not locations: each server resolves them against its own data
home (``loops_runner.storage.layout``), and the client builds the same strings, so
both sides parse and format them with these functions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from loops_runner.wire.names import check_storage_name

CheckpointKind = Literal["weights", "sampler_weights"]
CHECKPOINT_KINDS: tuple[CheckpointKind, ...] = ("weights", "sampler_weights")
_BT_PATH = re.compile(r"^bt://loops:([^/]+)/(weights|sampler_weights|sequences)/([^/]+)/?$")


@dataclass(frozen=True)
class BtPath:
    run_id: str
    kind: str
    name: str

    def __str__(self) -> str:
        return f"bt://loops:{self.run_id}/{self.kind}/{self.name}"


def parse_bt_path(path: str) -> BtPath:
    """Parse ``bt://loops:<run>/<kind>/<name>``; a trailing ``/`` is allowed."""
    match = _BT_PATH.fullmatch(path.strip())
    if match is None:
        raise ValueError(
            f"checkpoint path {path!r} is not of the form "
            "bt://loops:<run_id>/weights/<name> or bt://loops:<run_id>/sampler_weights/<name>"
        )
    run_id, kind, name = match.groups()
    check_storage_name(run_id)
    check_storage_name(name)
    return BtPath(run_id, kind, name)


def parse_checkpoint_path(path: str) -> BtPath:
    """Parse a ``bt://`` path that names a ``weights`` or ``sampler_weights`` checkpoint."""
    parsed = parse_bt_path(path)
    if parsed.kind not in CHECKPOINT_KINDS:
        raise ValueError(f"{path!r} names {parsed.kind}, not a weights or sampler_weights "
                         "checkpoint")
    return parsed


def bt_path(run_id: str, kind: CheckpointKind, name: str) -> str:
    return str(BtPath(check_storage_name(run_id), kind, check_storage_name(name)))
