"""Names that end up in storage paths: checkpoint names and run ids."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

NAME_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
MAX_NAME_LENGTH = 128


def check_storage_name(value: str) -> str:
    """A checkpoint name or run id: ``[A-Za-z0-9._-]{1,128}``, never ``.``/``..``.

    These names become folder names under the data home, so anything that could
    climb out of its folder (``/``, ``..``) is refused here, once, for everyone.
    """
    if not NAME_PATTERN.fullmatch(value) or value in {".", ".."}:
        raise ValueError(
            f"{value!r} is not a valid name: use 1-{MAX_NAME_LENGTH} characters of "
            "A-Z a-z 0-9 . _ - (not '.' or '..')"
        )
    return value


StorageName = Annotated[str, AfterValidator(check_storage_name)]
