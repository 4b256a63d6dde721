"""A teacher for distillation: a sampler of a base model, a checkpoint or a finished run.

``teacher`` is read as, in order: a ``bt://`` checkpoint URI; an existing run dir
(its ``run.json`` names the latest checkpoint); an existing checkpoint folder;
anything that looks like a local path but does not exist (an error that says
how to produce it); otherwise a base model name (registry name or Hugging Face id).

Teacher and student must see the same tokens: the teacher scores the student's
exact token ids, so a different tokenizer or chat template is refused before
training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from loops_runner.runner.config import ConfigError
from loops_runner.runner.run_record import RunRecord

TeacherKind = Literal["checkpoint", "base_model"]


@dataclass(frozen=True)
class TeacherSource:
    kind: TeacherKind
    value: str  # a checkpoint path/URI or a base model name
    described: str  # what the user gave, for messages


def _looks_local(text: str) -> bool:
    # "org/name" is a Hugging Face id; "./x", "/x", "~/x" or "a/b/c" are paths.
    return text.startswith((".", "/", "~")) or text.count("/") >= 2


def resolve_teacher(teacher: str, *, hint: str = "") -> TeacherSource:
    if teacher.startswith("bt://"):
        return TeacherSource("checkpoint", teacher, teacher)
    path = Path(teacher).expanduser()
    if (path / "run.json").is_file():
        record = RunRecord.load(path)
        checkpoint = record.latest_checkpoint() if record is not None else None
        if checkpoint is None:
            raise ConfigError(f"recipe.teacher: the run in {teacher} has no checkpoint yet; "
                              f"let it finish first{hint}")
        return TeacherSource("checkpoint", checkpoint.path, f"{teacher} (step {checkpoint.step})")
    if (path / "checkpoint.json").is_file():
        return TeacherSource("checkpoint", str(path.resolve()), teacher)
    if path.exists() and path.is_dir() and not (path / "config.json").is_file():
        raise ConfigError(f"recipe.teacher: {teacher} is neither a run dir (run.json), a "
                          "checkpoint folder (checkpoint.json) nor a model folder (config.json)")
    if not path.exists() and _looks_local(teacher):
        raise ConfigError(f"recipe.teacher: {teacher} does not exist{hint}")
    return TeacherSource("base_model", teacher, teacher)


def teacher_sampler(service: Any, source: TeacherSource, timeouts: Any) -> Any:
    """A sampling client that serves the teacher's weights for the whole run."""
    if source.kind == "base_model":
        return service.create_sampling_client(source.value, timeout=timeouts.sample_s,
                                              ready_timeout=timeouts.ready_s)
    # Loading with the optimizer restores the checkpoint's step, so the published
    # version is > 0 and the sampler serves the adapter (version 0 means the base).
    run = service.create_training_client_from_state_with_optimizer(source.value)
    return run.save_weights_and_get_sampling_client("teacher")


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
