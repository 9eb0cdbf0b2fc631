"""The one server-sent-events encoder: ``data: {json}\\n\\n`` per event, then ``data: [DONE]\\n\\n``."""

from __future__ import annotations

from pydantic import BaseModel

DONE = b"data: [DONE]\n\n"


def sse(event: BaseModel) -> bytes:
    return b"data: " + event.model_dump_json().encode() + b"\n\n"
