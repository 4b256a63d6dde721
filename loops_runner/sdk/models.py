"""The Baseten SDK's ``models`` module: the public types under the name scripts import.

``from baseten.loops.models import Datum`` ports as
``from loops_runner.sdk.models import Datum``.
"""

from loops_runner.sdk.types import *  # noqa: F403
from loops_runner.sdk.types import __all__ as __all__
