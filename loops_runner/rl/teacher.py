"""A teacher for distillation (or a judge for RL): a sampler of a base model, a
checkpoint or a finished run.

``teacher`` is read as, in order: a ``bt://`` checkpoint URI; an existing run dir
(its ``run.json`` names the latest checkpoint); an existing checkpoint folder;
anything that looks like a local path but does not exist (an error that says
how to produce it); otherwise a base model name (registry name or Hugging Face id).

Teacher and student must see the same tokens: the teacher scores the student's
exact token ids, so a different tokenizer or chat template is refused before
training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from loops_runner.runner.config import ConfigError
from loops_runner.runner.hosted_runs import Stopped, stop_run, stop_sampler
from loops_runner.runner.run_record import RunRecord
from loops_runner.wire import SamplerInfo

TeacherKind = Literal["checkpoint", "base_model"]


@dataclass(frozen=True)
class TeacherSource:
    kind: TeacherKind
    value: str  # a checkpoint path/URI or a base model name
    described: str  # what the user gave, for messages


def _looks_local(text: str) -> bool:
    # "org/name" is a Hugging Face id; "./x", "/x", "~/x" or "a/b/c" are paths.
    return text.startswith((".", "/", "~")) or text.count("/") >= 2


def resolve_teacher(teacher: str, *, hint: str = "", key: str = "recipe.teacher"
                    ) -> TeacherSource:
    if teacher.startswith("bt://"):
        return TeacherSource("checkpoint", teacher, teacher)
    path = Path(teacher).expanduser()
    if (path / "run.json").is_file():
        record = RunRecord.load(path)
        checkpoint = record.latest_checkpoint() if record is not None else None
        if checkpoint is None:
            raise ConfigError(f"{key}: the run in {teacher} has no checkpoint yet; "
                              f"let it finish first{hint}")
        return TeacherSource("checkpoint", checkpoint.path, f"{teacher} (step {checkpoint.step})")
    if (path / "checkpoint.json").is_file():
        return TeacherSource("checkpoint", str(path.resolve()), teacher)
    if path.exists() and path.is_dir() and not (path / "config.json").is_file():
        raise ConfigError(f"{key}: {teacher} is neither a run dir (run.json), a "
                          "checkpoint folder (checkpoint.json) nor a model folder (config.json)")
    if not path.exists() and _looks_local(teacher):
        raise ConfigError(f"{key}: {teacher} does not exist{hint}")
    return TeacherSource("base_model", teacher, teacher)


@dataclass
class ProvisionedSampler:
    """A sampler provisioned for one run, and how to stop what was provisioned for it."""

    sampler: Any
    stop: Callable[[], list[Stopped]]


def _nothing_to_stop() -> list[Stopped]:
    return []


def provision_sampler(service: Any, source: TeacherSource, timeouts: Any,
                      name: str = "teacher") -> ProvisionedSampler:
    """A sampling client that serves ``source``'s weights for the whole run.

    A base model gets a standalone sampler of its own (its process stops with
    ``stop``). A checkpoint is loaded into a run of its own on the trainer and
    served by that trainer's paired sampler; ``stop`` ends that run (the shared
    trainer and paired sampler processes stop with their last run). Against servers
    someone else started (``backend=external``) nothing is stopped.
    """
    control_plane = getattr(service, "control_plane", None)
    if source.kind == "base_model":
        sampler = service.create_sampling_client(source.value, timeout=timeouts.sample_s,
                                                 ready_timeout=timeouts.ready_s)
        endpoint = getattr(sampler, "endpoint", None)
        if control_plane is None or endpoint is None or endpoint.sampler_id is None:
            return ProvisionedSampler(sampler, _nothing_to_stop)
        info = SamplerInfo(id=endpoint.sampler_id, base_url=endpoint.base_url,
                           model_id=endpoint.model_id, deployment_id=endpoint.deployment_id,
                           status="ACTIVE")

        def stop_standalone() -> list[Stopped]:
            sampler.close()
            return [stop_sampler(control_plane, info)]

        return ProvisionedSampler(sampler, stop_standalone)
    # Loading with the optimizer restores the checkpoint's step, so the published
    # version is > 0 and the sampler serves the adapter (version 0 means the base).
    run = service.create_training_client_from_state_with_optimizer(source.value)
    sampler = run.save_weights_and_get_sampling_client(name)

    def stop_checkpoint_run() -> list[Stopped]:
        sampler.close()
        run.close()
        if control_plane is None or run.run_id is None:
            return []
        return [stop_run(control_plane, control_plane.get_run(run.run_id))]

    return ProvisionedSampler(sampler, stop_checkpoint_run)


def teacher_sampler(service: Any, source: TeacherSource, timeouts: Any) -> Any:
    """A sampling client that serves the teacher's weights for the whole run."""
    return provision_sampler(service, source, timeouts).sampler


def check_same_tokens(student: Any, teacher: Any, teacher_name: str) -> None:
    """Refuse a teacher whose tokenizer or chat template differs from the student's."""
    problems = []
    if student.get_vocab() != teacher.get_vocab():
        problems.append(f"vocabularies differ ({len(student)} vs {len(teacher)} tokens)")
    if getattr(student, "chat_template", None) != getattr(teacher, "chat_template", None):
        problems.append("chat templates differ")
    if problems:
        raise ConfigError(f"recipe.teacher {teacher_name!r} cannot teach this student: "
                          f"{' and '.join(problems)}. On-policy distillation scores the "
                          "student's exact tokens, so both must share a tokenizer and template")
