"""The Loops client: ``ServiceClient``, ``TrainingClient``, ``SamplingClient`` and types.

Imports no torch: methods that need it (custom losses, ``TensorData.to_torch``)
import it on first use.
"""

from loops_runner.sdk.types import *  # noqa: F403
from loops_runner.sdk.types import __all__ as _type_names

__all__ = [*_type_names]
