"""Message content: whether it is recorded, and the GenAI JSON shape it is recorded in.

Prompt and completion text is recorded only when the user opts in with
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true`` (or
``instrument(capture_content=True)``, which wins over the variable). Token counts and timings are recorded either way.
Recorded content goes on the span as the JSON strings the GenAI conventions allow
(``gen_ai.input.messages``, ``gen_ai.output.messages``): a list of messages, each a
role and its parts.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from typing import Any

__all__ = [
    "CAPTURE_CONTENT_ENV",
    "capture_content_default",
    "chat_messages",
    "text_messages",
    "to_json",
]

CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"


def capture_content_default() -> bool:
    """Whether ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` is ``true``."""
    return os.environ.get(CAPTURE_CONTENT_ENV, "").strip().lower() == "true"


def to_json(value: Any) -> str:
    """Content as the JSON string the conventions allow on spans."""
    return json.dumps(value, ensure_ascii=False, default=str)


def text_messages(role: str, text: str, finish_reason: str | None = None) -> str:
    """One message in the GenAI message JSON shape (role + text part)."""
    message: dict[str, Any] = {"role": role, "parts": [{"type": "text", "content": text}]}
    if finish_reason is not None:
        message["finish_reason"] = finish_reason
    return to_json([message])


def chat_messages(messages: Any) -> str:
    """Chat messages (dicts or objects with ``role``/``content``) as GenAI JSON."""
    out = []
    for message in messages or ():
        get = message.get if isinstance(message, Mapping) else functools.partial(getattr, message)
        content = get("content", None)
        parts = [{"type": "text", "content": content}] if isinstance(content, str) else content
        out.append({"role": get("role", None), "parts": parts or []})
    return to_json(out)
