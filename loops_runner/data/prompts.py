"""Prompt rows (RL prompts, distillation prompts, evaluation rows): one parser for all.

A prompt row is ``{"prompt": "text"}``, ``{"prompt": [messages]}`` or
``{"messages": [...]}`` ending before the reply the model writes; any other
fields stay with the row (a reward or scorer reads them). Every fault is a
:class:`DataError` naming the row and field.
"""

from __future__ import annotations

from collections.abc import Mapping

from loops_runner.data.conversations import messages_field, text_field
from loops_runner.data.sources import DataError, Row

PROMPT_FIELDS = ("messages", "prompt")
Messages = list[dict[str, str]]


def prompt_messages(row: Row, where: str, roles: Mapping[str, str] | None = None) -> Messages:
    """The conversation a prompt row opens with."""
    if "messages" in row:
        messages = messages_field(row["messages"], where, roles or {})
        if messages[-1]["role"] == "assistant":
            raise DataError(f"{where}: field 'messages' ends with an assistant turn; a prompt "
                            "ends before the reply the model writes")
        return messages
    if "prompt" in row:
        value = row["prompt"]
        if isinstance(value, list):
            return prompt_messages({"messages": value}, where, roles)
        return [{"role": "user", "content": text_field(value, "prompt", where)}]
    raise DataError(f"{where}: needs a 'prompt' (text or messages) or a 'messages' list; "
                    f"fields: {sorted(row)}")
