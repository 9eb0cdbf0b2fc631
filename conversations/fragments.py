"""A chat message as the page shows it (``chat/_message.html``): rendered once for the page
(conversations/views/pages.py) and for each live update (conversations/consumers.py)."""

from __future__ import annotations

import json
from typing import Any

from django.template.loader import render_to_string

from conversations import queries
from conversations.models import Conversation, Message
from conversations.render import render_markdown


def message_context(
    message: Message, conversation: Conversation, user: Any, versions: list[int] | None = None
) -> dict[str, Any]:
    """What ``chat/_message.html`` needs, for the person viewing it (the page and the consumer).
    ``versions``: the ids of the message's versions (``queries.versions_of``; read when None)."""
    if versions is None:
        versions = queries.versions_of([message])[message.pk]
    return {
        "m": message,
        "versions": version_pager(message, versions),
        "body": render_markdown(message.content),
        "conversation": conversation,
        "can_edit": queries.can_edit(message, conversation, user),
        "tool_calls": tool_calls_shown(message),
    }


def version_pager(message: Message, versions: list[int]) -> dict[str, Any] | None:
    """‹ n / total ›: the message's place among its versions and its neighbours' ids (None: one)."""
    if len(versions) < 2 or message.pk not in versions:
        return None
    i = versions.index(message.pk)
    return {
        "n": i + 1,
        "total": len(versions),
        "previous": versions[i - 1] if i > 0 else None,
        "next": versions[i + 1] if i + 1 < len(versions) else None,
    }


def tool_calls_shown(message: Message) -> list[dict[str, str]]:
    """An API reply's tool calls (``Message.tools``), each with its arguments as indented JSON
    (as written when they are not JSON)."""
    calls = (message.tools or {}).get("tool_calls") or []
    shown = []
    for call in calls:
        function = call.get("function") or {}
        arguments = function.get("arguments") or ""
        try:
            arguments = json.dumps(json.loads(arguments), indent=2, ensure_ascii=False)
        except ValueError:
            pass
        shown.append(
            {"id": call.get("id") or "", "name": function.get("name") or "?", "arguments": arguments}
        )
    return shown


def message_html(
    message: Message, conversation: Conversation, user: Any, versions: list[int] | None = None
) -> str:
    return render_to_string("chat/_message.html", message_context(message, conversation, user, versions))
