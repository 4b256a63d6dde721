"""Model registry and the built-in default model."""

from loops_runner.models.registry import (
    REGISTRY,
    ModelEntry,
    ResolvedModel,
    canonical_model_id,
    resolve_model,
)

__all__ = ["REGISTRY", "ModelEntry", "ResolvedModel", "canonical_model_id", "resolve_model"]
