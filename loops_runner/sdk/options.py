"""The ``ServiceClient`` options that come from the environment, checked before any call.

The same names and precedence as the Baseten SDK: an explicit keyword beats
the environment variable, which beats the default. A value outside the
allowed set fails here with an error naming the option (or the variable) and
the allowed values, before anything is provisioned.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from enum import StrEnum
from typing import Any, TypeVar, cast

from loops_runner.wire import AvailabilityModel, SamplerScope, TrainerScope

TEAM_ENV = "LOOPS_TEAM"
AVAILABILITY_ENV = "LOOPS_AVAILABILITY_MODEL"
SCOPE_ENV = "BASETEN_LOOPS_SCOPE"

E = TypeVar("E", bound=StrEnum)
F = TypeVar("F", bound=Callable[..., Any])


def env(name: str) -> str | None:
    return os.environ.get(name) or None


def parse_choice(kind: type[E], value: str, source: str) -> E:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(repr(member.value) for member in kind)
        raise ValueError(f"{source} must be one of {allowed}, got {value!r}") from None


def availability_model(value: AvailabilityModel | str | None) -> AvailabilityModel:
    if value is not None:
        return parse_choice(AvailabilityModel, value, "availability_model")
    from_env = env(AVAILABILITY_ENV)
    if from_env is not None:
        return parse_choice(AvailabilityModel, from_env, AVAILABILITY_ENV)
    return AvailabilityModel.dedicated


def trainer_scope(value: TrainerScope | str | None) -> TrainerScope | None:
    """The scope to send, or None for ``default`` (which is never sent)."""
    if value is not None:
        scope = parse_choice(TrainerScope, value, "scope")
    else:
        from_env = env(SCOPE_ENV)
        scope = (parse_choice(TrainerScope, from_env, SCOPE_ENV) if from_env is not None
                 else TrainerScope.default)
    return None if scope is TrainerScope.default else scope


def sampler_scope(value: SamplerScope | str | None) -> SamplerScope | None:
    """As ``trainer_scope``; ``BASETEN_LOOPS_SCOPE=team`` means default for samplers."""
    if value is not None:
        scope = parse_choice(SamplerScope, value, "scope")
    else:
        from_env = env(SCOPE_ENV)
        # One variable drives trainers and samplers; "team" is a trainer pool.
        if from_env is None or from_env == TrainerScope.team:
            scope = SamplerScope.default
        else:
            scope = parse_choice(SamplerScope, from_env, SCOPE_ENV)
    return None if scope is SamplerScope.default else scope


def check_count(value: int | None, name: str) -> None:
    """Replica counts are checked now: a paired sampler may be created much later."""
    if value is not None and value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


class PositionalOrderWarning(UserWarning):
    """A call passed by position an argument this client reads differently from the Baseten SDK."""


def positional_order(ours: tuple[str, ...], official: tuple[str, ...],
                     shared: int) -> Callable[[F], F]:
    """Wrap a method so that positions past the ``shared`` leading ones warn (see below)."""

    def decorate(method: F) -> F:
        @functools.wraps(method)
        def wrapper(self: object, *args: object, **kwargs: object) -> object:
            if len(args) > shared:
                warn_positional(method.__name__, args, ours, official, shared)
            return method(self, *args, **kwargs)

        return cast(F, wrapper)

    return decorate


def warn_positional(method: str, args: tuple[object, ...], ours: tuple[str, ...],
                    official: tuple[str, ...], shared: int) -> None:
    """Warn when ``args`` (after ``self``) go beyond the ``shared`` leading positions.

    The documented signatures (the Tinker-style spec) order some parameters
    differently from the Baseten SDK's code; a script relying on the SDK's
    positions would silently pass, e.g., ``replicas`` as ``seed``. Keywords
    mean the same in both.
    """
    import warnings

    for index in range(shared, len(args)):
        theirs = official[index] if index < len(official) else None
        difference = f"; the Baseten SDK reads it as {theirs!r}" \
            if theirs is not None and theirs != ours[index] else ""
        warnings.warn(
            f"{method}: argument {index + 1} was passed by position and is read as "
            f"{ours[index]!r}{difference}. Pass it by keyword ({ours[index]}=...): positions "
            f"after {ours[shared - 1]!r} differ between this client and the Baseten SDK "
            "(docs/porting.md)", PositionalOrderWarning, stacklevel=4)
