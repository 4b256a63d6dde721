"""Known models: short names mapped to the built-in model or Hugging Face ids.

Any Hugging Face id or local model directory is accepted as a base model too;
the registry only gives convenient names and context lengths.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from loops_runner.home import loops_home


@dataclass(frozen=True)
class ModelEntry:
    name: str
    source: str  # "builtin" or "hf"
    hf_id: str | None
    max_context_length: int
    description: str


REGISTRY: dict[str, ModelEntry] = {
    entry.name: entry
    for entry in (
        ModelEntry("tiny", "builtin", None, 2048,
                   "built-in Qwen3-architecture model, built locally (no download)"),
        ModelEntry("qwen3-0.6b", "hf", "Qwen/Qwen3-0.6B", 40960, "Qwen3 0.6B (needs hub access)"),
        ModelEntry("qwen3-1.7b", "hf", "Qwen/Qwen3-1.7B", 40960, "Qwen3 1.7B (needs hub access)"),
        ModelEntry("qwen3-4b", "hf", "Qwen/Qwen3-4B", 40960, "Qwen3 4B (needs hub access)"),
        ModelEntry("qwen3-8b", "hf", "Qwen/Qwen3-8B", 40960, "Qwen3 8B (needs hub access)"),
        ModelEntry("llama-3.2-1b", "hf", "meta-llama/Llama-3.2-1B-Instruct", 131072,
                   "Llama 3.2 1B Instruct (gated; needs hub access)"),
    )
}


@dataclass(frozen=True)
class ResolvedModel:
    """A base model resolved to something transformers can load."""

    requested: str
    # What to pass to from_pretrained: an absolute local directory or an HF id.
    load_path: str
    is_local: bool
    registry_name: str | None = None

    @property
    def canonical_id(self) -> str:
        return self.load_path


def _builtin_dir(name: str, home: Path, prepare: bool) -> Path:
    from loops_runner.models import tiny

    if name != "tiny":  # pragma: no cover - only one built-in today
        raise ValueError(f"unknown built-in model {name!r}")
    return tiny.prepare(home) if prepare else tiny.model_dir(home)


def resolve_model(name: str, home: Path | None = None, *, prepare: bool = True) -> ResolvedModel:
    """Resolve a registry name, local directory or HF id.

    ``tiny`` is built into the data home on first use (``prepare=True``).
    """
    if not name or not name.strip():
        raise ValueError("base model must be a non-empty name, directory or Hugging Face id")
    home = loops_home(home)
    entry = REGISTRY.get(name)
    if entry is not None:
        if entry.source == "builtin":
            path = _builtin_dir(name, home, prepare)
            return ResolvedModel(name, str(path), True, name)
        assert entry.hf_id is not None
        return ResolvedModel(name, entry.hf_id, False, name)
    candidate = Path(name).expanduser()
    if candidate.is_dir():
        return ResolvedModel(name, str(candidate.resolve()), True)
    if name.startswith((".", "/", "~")):
        raise ValueError(f"base model directory {name!r} does not exist")
    for entry in REGISTRY.values():
        if entry.hf_id == name:
            return ResolvedModel(name, name, False, entry.name)
    return ResolvedModel(name, name, False)


def canonical_model_id(name: str, home: Path | None = None) -> str:
    """One spelling per model, so ``tiny`` and its directory compare equal."""
    return resolve_model(name, home, prepare=False).canonical_id


def readable_model_id(name: str, home: Path | None = None) -> str:
    """The registry name of a model named by its directory (``tiny`` for the data
    home's tiny build), else ``name`` as given: what a person should see."""
    try:
        canonical = canonical_model_id(name, home)
    except ValueError:
        return name
    for registry_name in REGISTRY:
        if canonical_model_id(registry_name, home) == canonical:
            return registry_name
    return name


def max_context_length(resolved: ResolvedModel) -> int | None:
    if resolved.registry_name is not None:
        return REGISTRY[resolved.registry_name].max_context_length
    return None
