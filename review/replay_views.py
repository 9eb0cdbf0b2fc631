"""The replay page: /review/replay/<message id>/ (GET says whether the answer can be replayed,
POST replays it and shows the two token sequences with the first difference highlighted).

An async view: a replay holds a slot for as many tokens as were logged, and must not hold the
thread that every sync view of the process shares."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.contrib import admin
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_http_methods

from conversations.models import Message
from conversations.runtime import ModelNotReady, get_runtime
from review import access, replay, services
from review.models import AuditEntry
from review.views import reviewer_required


@reviewer_required
def _context(request: HttpRequest, message_id: int) -> Any:
    reply = Message.objects.select_related("conversation").filter(pk=message_id).first()
    if reply is None:
        raise Http404("No such answer")
    conversation = access.get_conversation_for_reviewer(request.user, reply.conversation_id)  # 404 outside
    try:
        result = replay.check(reply, get_runtime().get())
    except ModelNotReady as exc:
        result = replay.Replay("not_replayable", f"The model is not ready ({exc}).")
    return {
        **admin.site.each_context(request),
        "title": f"Replay of answer {reply.pk}",
        "reply": reply,
        "conversation": conversation,
        "result": result,
    }


@require_http_methods(["GET", "HEAD", "POST"])
async def replay_page(request: HttpRequest, message_id: int) -> HttpResponse:
    context = await sync_to_async(_context)(request, message_id)
    if isinstance(context, HttpResponse):  # to the login
        return context
    if context["result"] is None and request.method == "POST":
        reply, conversation = context["reply"], context["conversation"]
        result = await database_sync_to_async(replay.replay, thread_sensitive=False)(reply)
        await sync_to_async(services.audit)(
            request.user,
            AuditEntry.Action.VIEW,
            conversation=conversation,
            filters={"id": conversation.pk, "replay": reply.pk},
            detail=f"replayed answer {reply.pk}: {result.status}",
        )
        context["result"] = result
    return await sync_to_async(render)(request, "review/replay.html", context)
