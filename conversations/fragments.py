"""A chat message as the page shows it (``chat/_message.html``): rendered once for the page
(conversations/views/pages.py) and for each live update (conversations/consumers.py)."""

from __future__ import annotations

import json
from typing import Any

from django.template.loader import render_to_string

from conversations import queries
from conversations.models import Conversation, Message
from conversations.render import render_markdown


def message_context(message: Message, conversation: Conversation, user: Any) -> dict[str, Any]:
    """What ``chat/_message.html`` needs, for the person viewing it (the page and the consumer)."""
    return {
        "m": message,
        "body": render_markdown(message.content),
        "conversation": conversation,
        "can_edit": queries.can_edit(message, conversation, user),
        "tool_calls": tool_calls_shown(message),
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


def message_html(message: Message, conversation: Conversation, user: Any) -> str:
    return render_to_string("chat/_message.html", message_context(message, conversation, user))
