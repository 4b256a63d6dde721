"""Who an operation belongs to: trainer deployment kinds and accepted operations.

Names and fields follow the Baseten SDK (``baseten.loops.Operation``, the
``*TrainerDeployment`` classes), so code that inspects an error's
``descriptor`` or a deployment's ``kind`` ports unchanged. The client's own
routing uses ``deployments.TrainerEndpoint``; these are what a script sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class LocalTrainerDeployment:
    """A trainer reached directly (``ServiceClient.local``); its capacity is unknown."""

    base_url: str
    kind: ClassVar[str] = "unknown"


@dataclass(frozen=True)
class ServerlessTrainerDeployment:
    """Shared trainer capacity with no deployment of its own to poll."""

    base_url: str
    kind: ClassVar[str] = "serverless"


@dataclass(frozen=True)
class DedicatedTrainerDeployment:
    """A trainer deployment of this run, with a status on the control plane."""

    base_url: str
    deployment_id: str
    kind: ClassVar[str] = "dedicated"


TrainerDeploymentKind = (
    LocalTrainerDeployment | ServerlessTrainerDeployment | DedicatedTrainerDeployment
)


@dataclass(frozen=True)
class TrainerOperationContext:
    """A trainer operation's client: its deployment (when known) and run."""

    deployment: TrainerDeploymentKind | None = None
    run_id: str | None = None

    def fields(self) -> dict[str, str | None]:
        deployment = self.deployment
        return {
            "run_id": self.run_id,
            "trainer_type": deployment.kind if deployment is not None else None,
            "deployment_id": deployment.deployment_id
            if isinstance(deployment, DedicatedTrainerDeployment) else None,
        }


@dataclass(frozen=True)
class SamplerOperationContext:
    """A queued (serverless) sample's client."""

    sampler_id: str | None = None
    run_id: str | None = None

    def fields(self) -> dict[str, str | None]:
        return {"run_id": self.run_id, "sampler_id": self.sampler_id,
                "sampler_type": "serverless"}


@dataclass(frozen=True)
class Operation:
    """An accepted operation: its id, its name and the client that issued it."""

    operation_id: str
    name: str
    client: TrainerOperationContext | SamplerOperationContext

    def __post_init__(self) -> None:
        if not self.operation_id or not self.name:
            raise ValueError("an accepted operation needs an operation_id and a name")

    def fields(self) -> dict[str, str]:
        """Diagnostic fields (None dropped), for logs and messages."""
        merged = {**self.client.fields(), "operation": self.name,
                  "operation_id": self.operation_id}
        return {key: value for key, value in merged.items() if value is not None}
