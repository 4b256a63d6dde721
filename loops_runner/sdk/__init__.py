"""The Loops client: ``ServiceClient``, ``TrainingClient``, ``SamplingClient`` and types.

Names, argument order and defaults follow the Baseten Loops SDK, so a script
written for it runs with only its import line changed::

    from loops_runner.sdk import ServiceClient, AdamParams, Datum, ModelInput

Imports no torch: methods that need it (custom losses, ``TensorData.to_torch``)
import it on first use; transformers and wandb are imported on first use too.
"""

import logging as _logging

from loops_runner import __version__
from loops_runner.sdk.deployment_kinds import (
    DedicatedTrainerDeployment,
    LocalTrainerDeployment,
    Operation,
    SamplerOperationContext,
    ServerlessTrainerDeployment,
    TrainerOperationContext,
)
from loops_runner.sdk.errors import (
    LoopsError,
    OperationTimeoutError,
    RemoteOpError,
    RequestRejectedError,
    SamplerTerminatedError,
    SampleTimeoutError,
    ServerShutdownError,
    ServerUnavailableError,
    TrainerTerminatedError,
    UnknownRequestError,
    UnsupportedOperationError,
)
from loops_runner.sdk.futures import APIFuture
from loops_runner.sdk.options import PositionalOrderWarning
from loops_runner.sdk.sampling_client import SamplingClient
from loops_runner.sdk.service_client import ServiceClient
from loops_runner.sdk.training_client import TrainingClient
from loops_runner.sdk.types import *  # noqa: F403
from loops_runner.sdk.types import __all__ as _type_names

__all__ = [
    "APIFuture",
    "DedicatedTrainerDeployment",
    "LocalTrainerDeployment",
    "LoopsError",
    "Operation",
    "OperationTimeoutError",
    "PositionalOrderWarning",
    "RemoteOpError",
    "RequestRejectedError",
    "SampleTimeoutError",
    "SamplerOperationContext",
    "SamplerTerminatedError",
    "SamplingClient",
    "ServerShutdownError",
    "ServerUnavailableError",
    "ServerlessTrainerDeployment",
    "ServiceClient",
    "TrainerOperationContext",
    "TrainerTerminatedError",
    "TrainingClient",
    "UnknownRequestError",
    "UnsupportedOperationError",
    "__version__",
    *_type_names,
]


# Every poll is an HTTP request; httpx logs each at INFO. Quiet them unless
# the user configured those loggers themselves.
for _name in ("httpx", "httpcore"):
    if _logging.getLogger(_name).level == _logging.NOTSET:
        _logging.getLogger(_name).setLevel(_logging.WARNING)
