"""Conversations as JSONL (one per line: OpenAI messages plus metadata) and CSV (one row per message).

Both are generators over ``QuerySet.iterator(chunk_size)`` with the messages prefetched per chunk,
so a large export streams in constant memory: a fixed number of queries per chunk of conversations.

Under ASGI (Daphne), Django would read a *sync* iterator of a StreamingHttpResponse into a list
before sending a byte, so ``streaming_response`` hands it an async iterator there, which pulls
batches of lines from the generator in the request's database thread.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from itertools import islice
from typing import Any

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.db.models import Prefetch, QuerySet
from django.http import HttpRequest, StreamingHttpResponse

from conversations.models import Conversation, Message

CHUNK_SIZE = 200  # conversations per database round trip
LINES_PER_SEND = 50  # lines per hop from the database thread to the event loop (ASGI)

CSV_COLUMNS = [
    "conversation_id",
    "team",
    "owner",
    "source",
    "visibility",
    "model",
    "api_key",
    "request_user",
    "title",
    "deleted_at",
    "flagged",
    "message_id",
    "role",
    "name",
    "author",
    "choice_index",
    "content",
    "status",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "queue_wait",
    "ttft",
    "duration",
    "params",
    "error",
    "superseded_at",
    "created",
    "tools",
    "version_of",  # the first version of a regenerated answer or an edited message
]


def prepare(queryset: QuerySet[Conversation]) -> QuerySet[Conversation]:
    return (
        queryset.select_related("team", "owner", "api_key", "review_flag")
        .prefetch_related(
            Prefetch("messages", queryset=Message.objects.select_related("author").order_by("id"))
        )
        .order_by("id")
    )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def openai_message(message: Message) -> dict[str, str]:
    out = {"role": message.role, "content": message.content}
    if message.name:
        out["name"] = message.name
    return out


def message_metadata(message: Message) -> dict[str, Any]:
    return {
        "id": message.pk,
        "choice_index": message.choice_index,
        "status": message.status,
        "finish_reason": message.finish_reason,
        "prompt_tokens": message.prompt_tokens,
        "completion_tokens": message.completion_tokens,
        "queue_wait": message.queue_wait,
        "ttft": message.ttft,
        "duration": message.duration,
        "params": message.params,
        "tools": message.tools,  # tools / response_format requested, and the tool_calls made
        "error": message.error,
        # Who typed a user message in the browser (a shared conversation has several writers).
        "author": message.author.get_username() if message.author else None,
        # Replaced by a regenerated answer or an edited question in the browser chat.
        "superseded_at": _iso(message.superseded_at),
        # A later version (regenerated, or edited) of the message with this id; None: a first one.
        "version_of": message.version_of_id,
        "created": _iso(message.created),
    }


def conversation_record(conversation: Conversation) -> dict[str, Any]:
    """``messages`` is exactly the OpenAI chat format; everything else sits in ``metadata``,
    including the per-message details in the same order as ``messages``."""
    messages = list(conversation.messages.all())
    flag = getattr(conversation, "review_flag", None)
    return {
        "messages": [openai_message(m) for m in messages],
        "metadata": {
            "id": conversation.pk,
            "title": conversation.title,
            "team": conversation.team.name,
            "owner": conversation.owner.get_username(),
            "source": conversation.source,
            "visibility": conversation.visibility,
            "model": conversation.model_id,
            "api_key": conversation.api_key.prefix if conversation.api_key else None,
            "user": conversation.request_user,
            "system_prompt": conversation.system_prompt,
            "temperature": conversation.temperature,
            "max_tokens": conversation.max_tokens,
            "created": _iso(conversation.created),
            "updated": _iso(conversation.updated),
            "deleted_at": _iso(conversation.deleted_at),
            "flag": {"note": flag.note, "created": _iso(flag.created)} if flag else None,
            "messages": [message_metadata(m) for m in messages],
        },
    }


def jsonl(queryset: QuerySet[Conversation]) -> Iterator[str]:
    for conversation in prepare(queryset).iterator(chunk_size=CHUNK_SIZE):
        yield json.dumps(conversation_record(conversation), ensure_ascii=False) + "\n"


def _cell(value: Any) -> Any:
    # A spreadsheet runs a cell starting with one of these as a formula, and the text came from
    # users and the model: an apostrophe keeps it text. (JSONL is the exact export.)
    if isinstance(value, str) and value.startswith(("=", "+", "-", "@", "\t", "\r")):
        return "'" + value
    return value


def _csv_line(row: list[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow([_cell(v) for v in row])
    return buffer.getvalue()


def csv_lines(queryset: QuerySet[Conversation]) -> Iterator[str]:
    yield _csv_line(CSV_COLUMNS)
    for c in prepare(queryset).iterator(chunk_size=CHUNK_SIZE):
        head = [
            c.pk,
            c.team.name,
            c.owner.get_username(),
            c.source,
            c.visibility,
            c.model_id,
            c.api_key.prefix if c.api_key else "",
            c.request_user,
            c.title,
            _iso(c.deleted_at) or "",
            "yes" if getattr(c, "review_flag", None) else "",
        ]
        for m in c.messages.all():
            yield _csv_line(
                [
                    *head,
                    m.pk,
                    m.role,
                    m.name,
                    m.author.get_username() if m.author else "",
                    m.choice_index,
                    m.content,
                    m.status,
                    m.finish_reason,
                    m.prompt_tokens,
                    m.completion_tokens,
                    m.queue_wait,
                    m.ttft,
                    m.duration,
                    json.dumps(m.params),
                    m.error,
                    _iso(m.superseded_at) or "",
                    _iso(m.created),
                    json.dumps(m.tools) if m.tools else "",
                    m.version_of_id or "",
                ]
            )


async def _batches(lines: Iterator[str]) -> AsyncIterator[str]:
    def take() -> str:
        return "".join(islice(lines, LINES_PER_SEND))

    try:
        while chunk := await sync_to_async(take, thread_sensitive=True)():
            yield chunk
    finally:  # also when the client went away: close the generator and its cursor
        close = getattr(lines, "close", None)
        if close is not None:
            await sync_to_async(close, thread_sensitive=True)()


def streaming_response(
    request: HttpRequest, lines: Iterator[str], content_type: str
) -> StreamingHttpResponse:
    content = _batches(lines) if isinstance(request, ASGIRequest) else lines
    return StreamingHttpResponse(content, content_type=content_type)
