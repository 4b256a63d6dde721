"""Chat rows for SFT: ``{"messages": [...]}`` or ``{"prompt", "completion"}``, checked.

Each row becomes ``{"messages": [{role, content}, ...]}`` or a :class:`DataError`
naming the row and the field: a role outside system/user/assistant/tool (map
others with ``roles``), a null, non-text or empty content, a chat with no
assistant turn to train on, or a row in another format than the file's first
row (a file mixing formats is usually two files pasted together).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from loops_runner.data.checks import Checked, check_rows
from loops_runner.data.sources import BadRowPolicy, DataError, Row, Rows, read_source

Conversation = dict[str, list[dict[str, str]]]
DataFormat = Literal["auto", "messages", "prompt_completion"]

ROLES = ("system", "user", "assistant", "tool")
_FORMAT_FIELDS = {"messages": "'messages'", "prompt_completion": "'prompt' and 'completion'"}


def text_field(value: Any, field: str, where: str) -> str:
    """``value`` as non-empty text, or a DataError naming ``field``."""
    if value is None:
        raise DataError(f"{where}: field {field!r} is null; it must be text")
    if not isinstance(value, str):
        raise DataError(f"{where}: field {field!r} must be text, got {type(value).__name__} "
                        f"({value!r:.40})")
    if not value.strip():
        raise DataError(f"{where}: field {field!r} is empty")
    return value


def row_format(row: Row) -> Literal["messages", "prompt_completion"] | None:
    if "messages" in row:
        return "messages"
    if "prompt" in row or "completion" in row:
        return "prompt_completion"
    return None


# What other chat formats call the two sides (ShareGPT, OpenAssistant, ...): used to
# suggest the mapping, never applied unasked.
_LIKELY_ROLE = {"human": "user", "person": "user", "prompter": "user", "customer": "user",
                "gpt": "assistant", "bot": "assistant", "model": "assistant",
                "ai": "assistant", "chatbot": "assistant"}


def _role(value: Any, field: str, where: str, roles: Mapping[str, str]) -> str:
    role = roles.get(value, value) if isinstance(value, str) else value
    if role not in ROLES:
        guess = _LIKELY_ROLE.get(str(value).lower(), "user")
        raise DataError(f"{where}: field {field!r} is {value!r}; roles are {', '.join(ROLES)} "
                        f"(rename yours with recipe.dataset.roles='{{{value}: {guess}}}')")
    return str(role)


def messages_field(value: Any, where: str, roles: Mapping[str, str]) -> list[dict[str, str]]:
    """A checked ``messages`` list (roles mapped, contents text)."""
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field 'messages' must be a non-empty list of "
                        "{role, content} objects")
    messages = []
    for index, message in enumerate(value):
        field = f"messages[{index}]"
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise DataError(f"{where}: field {field!r} must be an object with 'role' and "
                            "'content'")
        role = _role(message["role"], f"{field}.role", where, roles)
        content = message["content"]
        if role == "system" and content == "":
            continue  # an empty system prompt is no prompt
        messages.append({"role": role, "content": text_field(content, f"{field}.content",
                                                             where)})
    return messages


def conversation_of(row: Row, where: str, fmt: DataFormat,
                    roles: Mapping[str, str] | None = None) -> Conversation:
    """One checked conversation with at least one assistant turn to train on."""
    found = row_format(row)
    if fmt == "auto":
        fmt = found or "messages"
    if found != fmt:
        raise DataError(f"{where}: expected {_FORMAT_FIELDS[fmt]} fields like the file's "
                        f"first row, found {sorted(row)}"
                        + ("; a file must use one format" if found else ""))
    if fmt == "messages":
        messages = messages_field(row["messages"], where, roles or {})
        if not any(m["role"] == "assistant" for m in messages):
            found_roles = sorted({m["role"] for m in messages})
            raise DataError(f"{where}: field 'messages' has no assistant turn, so nothing to "
                            f"train on (roles: {', '.join(found_roles)})")
        return {"messages": messages}
    for field in ("prompt", "completion"):
        if field not in row:
            raise DataError(f"{where}: missing field {field!r} (found {sorted(row)})")
    return {"messages": [{"role": "user", "content": text_field(row["prompt"], "prompt", where)},
                         {"role": "assistant",
                          "content": text_field(row["completion"], "completion", where)}]}


def _check_roles_are_mapped(rows: Rows, roles: Mapping[str, str]) -> None:
    """One line for a file in another chat dialect, suggesting the whole role mapping."""
    unknown: dict[str, int] = {}  # role -> index of the first row using it
    for index, row in enumerate(rows.rows):
        messages = row.get("messages")
        for message in messages if isinstance(messages, list) else ():
            role = message.get("role") if isinstance(message, Mapping) else None
            if isinstance(role, str) and roles.get(role, role) not in ROLES:
                unknown.setdefault(role, index)
    if not unknown:
        return
    first = min(unknown, key=unknown.__getitem__)
    mapping = ", ".join(f"{role}: {_LIKELY_ROLE.get(role.lower(), 'user')}" for role in unknown)
    raise DataError(f"{rows.where(unknown[first])}: role {first!r} is not one of "
                    f"{', '.join(ROLES)}; this file uses {', '.join(map(repr, unknown))}: map "
                    f"them with recipe.dataset.roles='{{{mapping}}}'")


def file_format(rows: list[Row], fmt: DataFormat) -> DataFormat:
    """The format every row of a source must have: ``fmt``, or (auto) the first row's."""
    if fmt != "auto":
        return fmt
    return next((f for f in map(row_format, rows) if f is not None), "auto")


def read_conversations(source: str, fmt: DataFormat = "auto", *, split: str = "train",
                       columns: Mapping[str, str] | None = None,
                       roles: Mapping[str, str] | None = None, bad_rows: BadRowPolicy = "stop",
                       policy_key: str = "recipe.dataset.bad_rows"
                       ) -> tuple[Checked[Conversation], str]:
    """Every checked conversation of a file or dataset, and the rows' content digest."""
    rows = read_source(source, split=split, columns=columns)
    fixed = file_format(rows.rows, fmt)
    if fixed == "messages":
        _check_roles_are_mapped(rows, roles or {})
    checked = check_rows(rows, lambda row, where: conversation_of(row, where, fixed, roles),
                         policy=bad_rows, policy_key=policy_key)
    return checked, rows.digest
