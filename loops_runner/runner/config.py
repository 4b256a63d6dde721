"""The runner's config schema and readable validation errors.

The composed Hydra config becomes these pydantic models before anything starts.
Unknown keys are errors (a typo must not silently do nothing), and every error
names the key, the value given and what is allowed, with the nearest valid key
when a name looks misspelt.
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from loops_runner.errors import ConfigError, UserInputError
from loops_runner.wire import AvailabilityModel, TrainerScope
from loops_runner.wire.placement import DEFAULT_RUNS_PER_TRAINER, MAX_RUNS_PER_TRAINER


class ConfigSection(BaseModel):
    """A group of the run config; unknown keys are refused, so a typo fails loudly."""

    model_config = ConfigDict(extra="forbid")


class LocalBackend(ConfigSection):
    kind: Literal["local"] = "local"
    home: str | None = None
    control_plane_url: str | None = None
    idle_timeout_s: float = Field(default=1800.0, gt=0)
    runs_per_trainer: int = Field(default=DEFAULT_RUNS_PER_TRAINER, ge=1,
                                  le=MAX_RUNS_PER_TRAINER)


class BasetenBackend(ConfigSection):
    kind: Literal["baseten"]
    base_url: str | None = "https://api.baseten.co"
    api_key_env: str = "BASETEN_API_KEY"
    training_project_id: str | None = None


class ExternalBackend(ConfigSection):
    kind: Literal["external"]
    trainer_url: str = Field(min_length=1)
    sampler_url: str = Field(min_length=1)


Backend = Annotated[LocalBackend | BasetenBackend | ExternalBackend, Field(discriminator="kind")]


class ModelSection(ConfigSection):
    base_model: str = Field(min_length=1)
    rank: int = Field(default=16, ge=1, le=1024)


class WandbSection(ConfigSection):
    mode: Literal["disabled", "offline", "online"] = "disabled"
    project: str = "loops-runner"
    entity: str | None = None
    name: str | None = None
    # The SDK's wandb_config: the training client streams its own W&B run.
    client_run: bool = False

    @model_validator(mode="after")
    def _client_run_needs_wandb(self) -> WandbSection:
        if self.client_run and self.mode == "disabled":
            raise ValueError("wandb.client_run=true streams to W&B, but wandb.mode is "
                             "'disabled': choose wandb=offline or wandb=online")
        return self


class ServiceSection(ConfigSection):
    """What the runner asks the Loops service for; the Baseten SDK's options, same checks."""

    team: str | None = Field(default=None, min_length=1)
    availability_model: AvailabilityModel | None = None
    scope: TrainerScope | None = None
    replicas: int = Field(default=1, ge=1)
    sampler_replicas: int | None = Field(default=None, ge=1)
    with_sampler: bool = False
    max_seq_len: int | None = Field(default=None, ge=1)


class Timeouts(ConfigSection):
    call_s: float = Field(default=600.0, gt=0)
    sample_s: float = Field(default=300.0, gt=0)
    ready_s: float = Field(default=3600.0, gt=0)


class SessionSection(ConfigSection):
    reuse_from_session_id: str | None = "auto"
    # None: the backend decides (local keeps its trainers warm, hosted ones stop).
    keep_warm: bool | None = None


class PricesSection(ConfigSection):
    """Your rates, in USD per million tokens of each kind the client counts
    (``loops_runner.sdk.usage``); with any set, each metrics line gets ``cost/usd`` and
    ``cost/usd_total`` and the summary the run's cost. A kind left null costs nothing."""

    trained: float | None = Field(default=None, ge=0)
    prompt: float | None = Field(default=None, ge=0)
    sampled: float | None = Field(default=None, ge=0)

    @property
    def priced(self) -> bool:
        return any(v is not None for v in (self.trained, self.prompt, self.sampled))

    def cost_usd(self, tokens: dict[str, int]) -> float:
        """What ``tokens`` (``{"trained", "prompt", "sampled"}``) cost at these rates."""
        return sum(tokens.get(kind, 0) * (rate or 0.0) / 1e6 for kind, rate in
                   (("trained", self.trained), ("prompt", self.prompt),
                    ("sampled", self.sampled)))


class ResumeSection(ConfigSection):
    from_dir: str | None = None
    fork: bool = False
    # start this run dir over: the earlier run's files move to <run dir>/previous-<n>/
    restart: bool = False
    auto_retries: int = Field(default=2, ge=0)


class CheckpointsSection(ConfigSection):
    # Periodic checkpoints kept in the data home: the newest N (null keeps all). The one a
    # resume starts from, named ones and the init_from source are never removed.
    keep_last: int | None = Field(default=3, ge=1)


class RunnerConfig(ConfigSection):
    backend: Backend = Field(default_factory=LocalBackend)
    model: ModelSection
    wandb: WandbSection = Field(default_factory=WandbSection)
    recipe: dict[str, Any]
    run_name: str | None = None
    seed: int = 0
    dry_run: bool = False
    max_steps: int | None = Field(default=None, ge=1)
    time_budget_s: float | None = Field(default=None, gt=0)
    objective: str | None = None
    report: bool = True
    timeouts: Timeouts = Field(default_factory=Timeouts)
    service: ServiceSection = Field(default_factory=ServiceSection)
    session: SessionSection = Field(default_factory=SessionSection)
    resume: ResumeSection = Field(default_factory=ResumeSection)
    checkpoints: CheckpointsSection = Field(default_factory=CheckpointsSection)
    prices: PricesSection = Field(default_factory=PricesSection)
    init_from: str | None = None


# Tags of discriminated unions (backends, evaluators): pydantic adds them to locations.
_UNION_TAGS = frozenset({"local", "baseten", "external", "sampling", "nll"})


def _valid_keys(model: type[BaseModel] | None, location: tuple[Any, ...]) -> list[str]:
    """The field names allowed at ``location`` (the parent of a bad key)."""
    current: Any = model
    for part in location:
        if current is None or not hasattr(current, "model_fields"):
            return []
        field = current.model_fields.get(part)
        if field is None:
            return []
        annotation = field.annotation
        current = annotation if isinstance(annotation, type) and issubclass(
            annotation, BaseModel) else None
    if current is None or not hasattr(current, "model_fields"):
        return []
    return list(current.model_fields)


def describe_errors(error: ValidationError, root: type[BaseModel] | None,
                    prefix: str = "") -> str:
    """Turn pydantic errors into lines naming key, value and what is allowed."""
    lines = []
    for item in error.errors():
        location = tuple(item["loc"])
        # Discriminated unions add the tag as a location part; drop it for display.
        shown = [str(part) for part in location if part not in _UNION_TAGS]
        key = prefix + ".".join(shown)
        value = item.get("input")
        if item["type"] == "extra_forbidden":
            parent = tuple(p for p in location[:-1] if p not in _UNION_TAGS)
            allowed = _valid_keys(root, parent)
            suggestion = difflib.get_close_matches(str(location[-1]), allowed, n=1)
            hint = f"; did you mean '{prefix}{'.'.join([*map(str, parent), suggestion[0]])}'?" \
                if suggestion else ""
            allowed_text = f" Allowed keys here: {', '.join(sorted(allowed))}." if allowed else ""
            lines.append(f"unknown key '{key}' (value {value!r}){hint}{allowed_text}")
        elif item["type"] == "missing":
            lines.append(f"missing required key '{key}'")
        elif isinstance(item.get("ctx", {}).get("error"), UserInputError):
            # Already a whole sentence (a plug-in that does not load, ...): say where only.
            message = str(item["ctx"]["error"])
            where = key.rstrip(".")
            lines.append(message if not where or message.startswith(where)
                         else f"{where}.{message}")
        elif isinstance(value, dict):
            # A check across keys: the section's whole content would bury the reason.
            reason = str(item["msg"]).removeprefix("Value error, ")
            lines.append(f"'{key.rstrip('.')}': {reason}")
        else:
            lines.append(f"'{key}' = {value!r}: {item['msg']}")
    if len(lines) == 1:  # one fault, one line
        return lines[0]
    return "\n" + "\n".join(f"  - {line}" for line in lines)


def validate_config(raw: dict[str, Any]) -> RunnerConfig:
    try:
        return RunnerConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError("invalid config: " + describe_errors(error, RunnerConfig)) from None


def _strict(schema: type[BaseModel]) -> type[BaseModel]:
    """The schema with unknown keys forbidden, unless it explicitly allows extras.

    Pydantic ignores unknown keys by default; for a config that would let a
    typo silently do nothing.
    """
    if schema.model_config.get("extra") in ("forbid", "allow"):
        return schema
    return type(schema.__name__, (schema,),
                {"model_config": ConfigDict(**{**schema.model_config, "extra": "forbid"})})


def validate_section(schema: type[BaseModel], raw: dict[str, Any], prefix: str) -> BaseModel:
    try:
        return _strict(schema).model_validate(raw)
    except ValidationError as error:
        raise ConfigError("invalid config: " + describe_errors(error, schema, prefix)) from None
