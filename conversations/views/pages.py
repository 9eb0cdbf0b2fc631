"""The chat pages: the conversation list, one conversation, and the owner's changes to it."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from conversations import actions, json_answers, preferences, queries
from conversations.actions import STALE_AFTER
from conversations.consumers import FrameError, parse_frame
from conversations.fragments import message_context
from conversations.ids import parse_id
from conversations.live import replies
from conversations.models import ChatPreferences, Conversation, Message
from conversations.runtime import get_runtime
from inference.constraints import ConstraintError
from upstreams import choices

TEAM_SESSION_KEY = "team_id"
NEW_TITLE = "New conversation"  # an untitled conversation's name, as the templates show it


class SettingsForm(forms.Form):
    system_prompt = forms.CharField(required=False, max_length=8000, widget=forms.Textarea(attrs={"rows": 3}))
    temperature = forms.FloatField(required=False, min_value=0.0, max_value=2.0)
    max_tokens = forms.IntegerField(required=False, min_value=1, max_value=32768)
    # One of the team's models (upstreams.choices); blank: the default model.
    model_id = forms.CharField(required=False, max_length=200)
    # "Answer as JSON" (conversations/json_answers.py): any JSON object, or one valid against the schema.
    json_answers = forms.BooleanField(required=False)
    json_schema = forms.CharField(required=False, max_length=20000, widget=forms.Textarea(attrs={"rows": 4}))

    def clean_json_schema(self) -> dict[str, Any] | None:
        model = get_runtime().model  # the loaded model's tokenizer, if any (not waiting for it)
        try:
            return json_answers.parse_schema(
                self.cleaned_data["json_schema"], model.tokenizer if model else None
            )
        except ConstraintError as exc:
            raise forms.ValidationError(str(exc)) from None


def _team(request: HttpRequest):
    return actions.current_team(request.user, request.session.get(TEAM_SESSION_KEY))


def _source(request: HttpRequest) -> str:
    """The sidebar's list: the browser chats, or (``?source=api``) the user's API calls."""
    return Conversation.Source.API if request.GET.get("source") == "api" else Conversation.Source.WEB


def sidebar_context(
    request: HttpRequest, query: str = "", source: str | None = None, current_id: int | None = None
) -> dict[str, Any]:
    """The sidebar's: ``current_id`` is the conversation the page shows (highlighted in the list)."""
    team = _team(request)
    source = source or _source(request)
    return {
        "team": team,
        "teams": queries.teams_of(request.user),
        "conversations": queries.sidebar_conversations(request.user, team, query, source),
        "query": query,
        "source": source,
        "current_id": current_id,
    }


@require_safe
@login_required
def home(request: HttpRequest) -> HttpResponse:
    query = request.GET.get("q", "")
    return render(request, "chat/home.html", sidebar_context(request, query))


@require_safe
@login_required
def conversation_list(request: HttpRequest) -> HttpResponse:
    """The sidebar's list alone (htmx swaps it in while the user types a search, and when the
    list's socket says it changed); ``current``: the conversation the page shows."""
    current = parse_id(request.GET.get("current"))
    context = sidebar_context(request, request.GET.get("q", ""), current_id=current)
    return render(request, "chat/_conversation_list.html", context)


@require_POST
@login_required
def switch_team(request: HttpRequest) -> HttpResponse:
    team = queries.get_team_for_user(request.user, _int(request.POST.get("team")))
    request.session[TEAM_SESSION_KEY] = team.pk
    return redirect("chat:home")


@require_http_methods(["GET", "HEAD", "POST"])
@login_required
async def create(request: HttpRequest) -> HttpResponse:
    """A conversation is made with its first message, never empty. GET: the new conversation's
    page (nothing saved; ``?from=<message id>``: that message's text in the box). POST {text}: the
    conversation and its first message are saved and the reply starts, then the page redirects to
    it; a refused message (too long, a limit reached) comes back in the box and nothing is saved."""
    if request.method != "POST":
        return await sync_to_async(_new_page)(request)
    text = request.POST.get("text", "")
    if not text.strip():  # the form of an older page: a new conversation to write in
        return redirect("chat:create")
    try:
        parse_frame(json.dumps({"action": "send", "text": text}), None)  # the websocket's checks
    except FrameError as exc:
        return await sync_to_async(_new_page)(request, str(exc), text)
    user = await request.auser()
    conversation = await sync_to_async(lambda: actions.create_conversation(user, _team(request)))()
    try:
        await replies.send(user, conversation, text)
    except replies.ChatError as exc:
        if exc.keep_text is not None:  # nothing written: no conversation either
            await sync_to_async(actions.discard_empty_conversation)(conversation)
            return await sync_to_async(_new_page)(request, str(exc), text)
        # Otherwise the message is saved, unanswered, with the reason: the conversation shows it.
    return redirect("chat:conversation", conversation.pk)


def _new_page(request: HttpRequest, error: str = "", text: str = "") -> HttpResponse:
    source = parse_id(request.GET.get("from"))
    if source is not None and not text:
        message = queries.get_message_for_user(request.user, source)
        text = message.content if message.role == Message.Role.USER else ""
    context = {**sidebar_context(request), "error": error, "text": text}
    return render(request, "chat/new.html", context, status=400 if error else 200)


@require_safe
@login_required
def conversation(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conv = queries.get_conversation_for_user(request.user, conversation_id)
    # Replies left 'streaming' by a dead process (stale heartbeat) show as interrupted, with their
    # text and a Regenerate button. A live process's streams have fresh heartbeats: untouched.
    # (Read first: a page view writes only when there is something to mark.)
    stale_before = timezone.now() - timedelta(seconds=STALE_AFTER)
    if conv.messages.filter(status=Message.Status.STREAMING, heartbeat_at__lt=stale_before).exists():
        # This conversation's only (the periodic sweep does the others); open pages are told.
        actions.interrupt_stale_messages(stale_before, conversation_id=conv.pk)
    rows = list(queries.visible_messages(conv).select_related("author"))
    versions = queries.versions_of(rows)
    is_owner = conv.owner_id == request.user.pk
    context = sidebar_context(request, source=conv.source, current_id=conv.pk)
    temperature = conv.temperature
    context.update(
        {
            "conversation": conv,
            "read_only": conv.source == Conversation.Source.API,
            "is_owner": is_owner and conv.source != Conversation.Source.API,
            "streaming": any(m.status == Message.Status.STREAMING for m in rows),  # Stop enabled
            "defaults": {
                "temperature": replies.DEFAULT_TEMPERATURE,
                "top_p": replies.DEFAULT_TOP_P,
                "max_tokens": replies.default_max_tokens(),
            },
            "rows": [message_context(m, conv, request.user, versions[m.pk]) for m in rows],
            "model_name": choices.model_for(conv.model_id) or get_runtime().model_id,
            "model_choices": (model_choices := choices.choices(conv.team_id) if is_owner else []),
            # Kept selected (so that saving other settings keeps it) though no longer offered.
            "model_unavailable": is_owner and conv.model_id not in ("", *(c.id for c in model_choices)),
            "default_model": choices.default_model_id(),
            "settings_form": SettingsForm(
                initial={
                    "system_prompt": conv.system_prompt,
                    # The values in use: the conversation's own, else the defaults (not empty fields).
                    "temperature": replies.DEFAULT_TEMPERATURE if temperature is None else temperature,
                    "max_tokens": conv.max_tokens or replies.default_max_tokens(),
                    "model_id": conv.model_id,
                    "json_answers": conv.json_answers,
                    "json_schema": "" if conv.json_schema is None else json.dumps(conv.json_schema, indent=2),
                }
            ),
        }
    )
    return render(request, "chat/conversation.html", context)


@require_POST
@login_required
def rename(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conv = queries.get_conversation_for_owner(request.user, conversation_id)
    actions.rename(conv, request.POST.get("title", ""))
    return redirect("chat:conversation", conv.pk)


@require_POST
@login_required
def sharing(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conv = queries.get_conversation_for_owner(request.user, conversation_id)
    visibility = request.POST.get("visibility", "")
    if visibility in Conversation.Visibility.values:
        actions.set_visibility(conv, visibility)
    return redirect("chat:conversation", conv.pk)


@require_POST
@login_required
def conversation_settings(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conv = queries.get_conversation_for_owner(request.user, conversation_id)
    form = SettingsForm(request.POST)
    if form.is_valid() and form.cleaned_data["model_id"] not in ("", conv.model_id):
        if form.cleaned_data["model_id"] not in [c.id for c in choices.choices(conv.team_id)]:
            form.add_error("model_id", "Choose one of the models your team may use.")
    if form.is_valid():
        # The form shows the defaults in use: a default left as it was stays "the default".
        data = form.cleaned_data
        if conv.temperature is None and data["temperature"] == replies.DEFAULT_TEMPERATURE:
            data["temperature"] = None
        if conv.max_tokens is None and data["max_tokens"] == replies.default_max_tokens():
            data["max_tokens"] = None
        actions.update_settings(conv, **data)
        messages.success(request, "Settings saved.")
    else:
        messages.error(request, "Settings not saved: " + "; ".join(_form_errors(form)))
    return redirect("chat:conversation", conv.pk)


@require_http_methods(["GET", "HEAD", "POST"])
@login_required
def delete(request: HttpRequest, conversation_id: int) -> HttpResponse:
    """GET asks (and says what delete means), POST deletes."""
    conv = queries.get_conversation_for_owner(request.user, conversation_id)
    if request.method == "POST":
        actions.soft_delete(conv)
        name = conv.title or NEW_TITLE  # the name the pages show
        messages.success(request, f"“{name}” was deleted: it is hidden from you and your team.")
        return redirect("chat:home")
    from review.retention import policy_for  # the team's retention policy (review owns it)

    context = {**sidebar_context(request, current_id=conv.pk), "conversation": conv}
    context["policy"] = policy_for(conv.team)
    return render(request, "chat/delete.html", context)


@require_POST
@login_required
def theme(request: HttpRequest) -> HttpResponse:
    """Remember the colour theme (auto: the browser's), then go back to the page it was chosen on."""
    choice = request.POST.get("theme", "")
    if choice in ChatPreferences.Theme.values:
        preferences.set_theme(request.user, choice)
    back = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()}):
        back = "/"
    return redirect(back)


def _int(value: str | None) -> int:
    return parse_id(value) or 0


def _form_errors(form: forms.Form) -> list[str]:
    return [f"{field}: {' '.join(errors)}" for field, errors in form.errors.items()]
