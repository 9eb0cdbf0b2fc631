"""Download a conversation: JSON in the OpenAI messages format, or Markdown."""

from __future__ import annotations

import json
import re

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_safe

from conversations import queries
from conversations.models import Conversation, Message


def _filename(conversation: Conversation, suffix: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", conversation.title or "conversation").strip("-")[:50]
    return f"{slug or 'conversation'}-{conversation.pk}.{suffix}"


def _messages(conversation: Conversation) -> list[dict[str, str]]:
    out = []
    if conversation.system_prompt:
        out.append({"role": "system", "content": conversation.system_prompt})
    for m in queries.visible_messages(conversation).exclude(role=Message.Role.SYSTEM):
        if m.role == Message.Role.ASSISTANT and not m.content:
            continue
        out.append({"role": m.role, "content": m.content})
    return out


@require_safe
@login_required
def export_json(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation = queries.get_conversation_for_user(request.user, conversation_id)
    body = {
        "title": conversation.title,
        "model": conversation.model_id or None,
        "messages": _messages(conversation),
    }
    response = HttpResponse(json.dumps(body, ensure_ascii=False, indent=2), content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="{_filename(conversation, "json")}"'
    return response


@require_safe
@login_required
def export_markdown(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation = queries.get_conversation_for_user(request.user, conversation_id)
    parts = [f"# {conversation.title or 'Conversation'}\n"]
    for m in _messages(conversation):
        parts.append(f"## {m['role'].capitalize()}\n\n{m['content'].strip()}\n")
    response = HttpResponse("\n".join(parts), content_type="text/markdown; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{_filename(conversation, "md")}"'
    return response
