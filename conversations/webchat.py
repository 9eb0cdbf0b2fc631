"""The browser chat's reads and writes, beside ``conversations.services`` and under its rules:
every write commits, then broadcasts on the conversation's group.

Decisions the page relies on:
- **Regenerate** marks the last answer ``superseded_at`` (hidden from the conversation and from
  later prompts) and generates a new one, a new *version* of it (``Message.version_of``).
- **Edit and resend** keeps every earlier message. The edited user message and everything after it
  (its branch) are superseded the same way; the edited text becomes a new user message at the end,
  a new version of the edited one, and a new answer is generated for it.
- **Versions** (‹ 1 / 3 › in the page): choosing another version of a message hides the shown one
  with its branch, and shows the chosen one with the branch it had when it was hidden. The
  messages of one branch are hidden together, with one timestamp unique in the conversation, which
  is how they are found again. The visible messages are always one path through the versions, in
  id order: the prompt, the exports and the search read that path; reviewers see every version.
- **Delete** is soft: ``deleted_at`` hides the conversation from everyone in the chat; reviewers
  keep it until a retention policy purges it.
- Only the owner renames, deletes, shares or changes the settings; teammates of a shared
  conversation read, send, stop and regenerate. Each person edits only their own messages.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from conversations import services
from conversations.models import Conversation, Membership, Message, Team
from conversations.runner import STALE_AFTER

TITLE_CHARS = 60
SEARCH_LIMIT = 100


class Busy(Exception):
    """A reply is already being generated in this conversation."""


# --- Reads ---------------------------------------------------------------------------------------


def teams_of(user: AbstractBaseUser) -> list[Team]:
    return list(Team.objects.filter(memberships__user=user).order_by("name"))


def current_team(user: AbstractBaseUser, team_id: int | None) -> Team:
    """The team the user chose (``team_id`` from the session) if they are still in it, else their first
    team; a user with no team gets a personal one."""
    teams = teams_of(user)
    for team in teams:
        if team.pk == team_id:
            return team
    if teams:
        return teams[0]
    return services.default_team(user)


def sidebar_conversations(
    user: AbstractBaseUser, team: Team, query: str = "", source: str = Conversation.Source.WEB
) -> QuerySet[Conversation]:
    """The user's browser conversations in ``team`` and the team's shared ones, newest first;
    ``query`` searches titles and the text of visible messages. (API calls are logged as
    conversations too; they stay out of the default list, which would otherwise fill with scripts'
    calls: ``source="api"`` lists the user's own calls, made with their keys in ``team``.)
    """
    if source == Conversation.Source.API:
        conversations = services.visible_conversations(user).filter(
            team=team, source=Conversation.Source.API, owner=user
        )
    else:
        conversations = services.visible_conversations(user).filter(team=team, source=Conversation.Source.WEB)
    query = query.strip()
    if query:
        matching = Message.objects.filter(content__icontains=query, superseded_at__isnull=True).values(
            "conversation_id"
        )
        conversations = conversations.filter(Q(title__icontains=query) | Q(pk__in=matching))
    return conversations.select_related("owner").order_by("-updated")[:SEARCH_LIMIT]


def visible_messages(conversation: Conversation) -> QuerySet[Message]:
    return conversation.messages.filter(superseded_at__isnull=True).order_by("id")


def get_conversation_for_owner(user: AbstractBaseUser, conversation_id: int) -> Conversation:
    """The conversation, for an owner-only action: 404 for whoever cannot see it, 403 for a teammate."""
    conversation = services.get_conversation_for_user(user, conversation_id)
    if conversation.owner_id != user.pk:
        raise PermissionDenied("Only the owner can do this.")
    return conversation


def can_edit(message: Message, conversation: Conversation, user: AbstractBaseUser) -> bool:
    """A user message can be edited by its author (by the owner when it has none: an API log)."""
    if message.role != Message.Role.USER:
        return False
    if message.author_id is not None:
        return message.author_id == user.pk
    return conversation.owner_id == user.pk


def get_visible_message(conversation: Conversation, message_id: int) -> Message | None:
    return visible_messages(conversation).filter(pk=message_id).first()


# --- Conversation writes (owner only; the views check) -------------------------------------------


def create_conversation(owner: AbstractBaseUser, team: Team) -> Conversation:
    if not Membership.objects.filter(team=team, user=owner).exists():
        raise PermissionDenied("Not a member of this team.")
    return services.start_conversation(owner, team, source=Conversation.Source.WEB)


def _changed(conversation: Conversation, fields: list[str]) -> None:
    conversation.save(update_fields=[*fields, "updated"])
    services.broadcast(conversation.pk, {"type": "chat.conversation", "conversation_id": conversation.pk})


def rename(conversation: Conversation, title: str) -> None:
    with transaction.atomic():
        conversation.title = " ".join(title.split())[:200]
        _changed(conversation, ["title"])


def set_visibility(conversation: Conversation, visibility: str) -> None:
    if visibility not in Conversation.Visibility.values:
        raise ValueError(f"unknown visibility {visibility!r}")
    with transaction.atomic():
        conversation.visibility = visibility
        _changed(conversation, ["visibility"])


def update_settings(
    conversation: Conversation,
    *,
    system_prompt: str,
    temperature: float | None,
    max_tokens: int | None,
    model_id: str | None = None,
    json_answers: bool | None = None,
    json_schema: dict[str, Any] | None = None,
) -> None:
    """``model_id``: None keeps the model; blank: the default model (recorded at the next reply).
    ``json_answers``: None keeps "Answer as JSON" and its schema; else both are set (the schema
    checked by the caller: conversations/json_answers.py)."""
    fields = ["system_prompt", "temperature", "max_tokens"]
    with transaction.atomic():
        conversation.system_prompt = system_prompt
        conversation.temperature = temperature
        conversation.max_tokens = max_tokens
        if json_answers is not None:
            conversation.json_answers = json_answers
            conversation.json_schema = json_schema
            fields += ["json_answers", "json_schema"]
        if model_id is not None:
            conversation.model_id = model_id
            fields.append("model_id")
        _changed(conversation, fields)


def soft_delete(conversation: Conversation) -> None:
    from review.services import record_deleted  # the audit trail lives in review

    with transaction.atomic():
        conversation.deleted_at = timezone.now()
        _changed(conversation, ["deleted_at"])
        record_deleted(conversation, conversation.owner)  # only the owner deletes


# --- Message writes (anyone who can see the conversation) ----------------------------------------


def _check_not_busy(conversation: Conversation) -> None:
    """One generation at a time per conversation: a streaming row whose heartbeat is fresh (in any
    process) means one is running. A stale one is left to the interrupted-sweep."""
    fresh = timezone.now() - timedelta(seconds=STALE_AFTER)
    if conversation.messages.filter(status=Message.Status.STREAMING, heartbeat_at__gte=fresh).exists():
        raise Busy("A reply is being written in this conversation: wait for it, or press Stop.")


def add_user_message(conversation: Conversation, text: str, author: AbstractBaseUser) -> Message:
    """Commit the user's message (and the title, from the first one) before anything is generated."""
    with transaction.atomic():
        locked = Conversation.objects.select_for_update().get(pk=conversation.pk)
        _check_not_busy(locked)
        message = services.add_user_message(locked, text, author=author)
        if not locked.title:
            locked.title = " ".join(text.split())[:TITLE_CHARS]
            _changed(locked, ["title"])
        conversation.title = locked.title
    return message


def supersede(conversation: Conversation, messages: Iterable[Message]) -> list[int]:
    """Hide ``messages`` (one branch) from the conversation, kept for reviewers and for browsing the
    versions. The branch gets a timestamp no other hidden branch of the conversation has."""
    ids = [m.pk for m in messages]
    if ids:
        stamp = timezone.now()
        latest = (
            conversation.messages.filter(superseded_at__isnull=False)
            .order_by("-superseded_at")
            .values_list("superseded_at", flat=True)
            .first()
        )
        if latest is not None and stamp <= latest:
            stamp = latest + timedelta(microseconds=1)
        Message.objects.filter(pk__in=ids, conversation=conversation).update(superseded_at=stamp)
        services.broadcast(conversation.pk, {"type": "chat.superseded", "message_ids": ids})
    return ids


def version_root(message: Message) -> int:
    """The id of the first version of ``message`` (its own when it is one)."""
    return message.version_of_id or message.pk


def versions_of(messages: Iterable[Message]) -> dict[int, list[int]]:
    """For each message, the ids of all its versions, oldest first (a message with one version
    maps to ``[its id]``)."""
    messages = list(messages)
    roots = {version_root(m) for m in messages}
    groups: dict[int, list[int]] = {root: [] for root in roots}
    rows = Message.objects.filter(Q(pk__in=roots) | Q(version_of__in=roots)).order_by("id")
    for pk, version_of in rows.values_list("pk", "version_of"):
        groups[version_of or pk].append(pk)
    return {m.pk: groups[version_root(m)] for m in messages}


def select_version(conversation: Conversation, message_id: int) -> None:
    """Show the version ``message_id`` of a message instead of the one shown, with its branch.

    The shown version and everything after it are hidden (one branch); the chosen version and the
    messages hidden together with it come back. Refused while a reply is being written."""
    with transaction.atomic():
        _check_not_busy(Conversation.objects.select_for_update().get(pk=conversation.pk))
        chosen = conversation.messages.filter(pk=message_id).first()
        if chosen is None:
            raise ValueError("There is no such version.")
        if chosen.superseded_at is None:
            return  # already shown
        root = version_root(chosen)
        shown = visible_messages(conversation).filter(Q(pk=root) | Q(version_of=root)).first()
        if shown is None:
            raise ValueError("This version belongs to a branch that is not shown.")
        branch = conversation.messages.filter(superseded_at=chosen.superseded_at, pk__gte=chosen.pk)
        restored = list(branch.values_list("pk", flat=True))
        supersede(conversation, visible_messages(conversation).filter(pk__gte=shown.pk))
        Message.objects.filter(pk__in=restored).update(superseded_at=None)
        services.broadcast(conversation.pk, {"type": "chat.refresh"})


def prepare_regenerate(conversation: Conversation) -> Message | None:
    """Supersede the last answer, so that a new one can be generated; return the user message it
    answered (marked unanswered if the model cannot take the new reply)."""
    with transaction.atomic():
        _check_not_busy(Conversation.objects.select_for_update().get(pk=conversation.pk))
        last = visible_messages(conversation).last()
        if last is None or last.role != Message.Role.ASSISTANT:
            raise ValueError("There is no answer to regenerate.")
        supersede(conversation, [last])
        question = visible_messages(conversation).filter(role=Message.Role.USER).last()
        if question is not None:
            question.answer_version_of = version_root(last)  # the new answer is its next version
            question.replaced_answer = last.pk  # shown again if the new one cannot be started
        return question


def undo_regenerate(conversation: Conversation, question: Message) -> None:
    """The new answer could not be started (``prepare_regenerate`` hid the shown one): show that
    answer again, and the question as answered, as they were."""
    with transaction.atomic():
        if visible_messages(conversation).filter(pk__gt=question.pk).exists():
            return
        replaced = conversation.messages.filter(pk=question.replaced_answer)
        replaced.update(superseded_at=None)
        Message.objects.filter(pk=question.pk).update(status=Message.Status.COMPLETE, error="")
        services.broadcast(conversation.pk, {"type": "chat.refresh"})


def prepare_retry(conversation: Conversation, message_id: int) -> Message:
    """An unanswered user message, the conversation's last, becomes an ordinary one to answer."""
    with transaction.atomic():
        _check_not_busy(Conversation.objects.select_for_update().get(pk=conversation.pk))
        last = visible_messages(conversation).last()
        if last is None or last.pk != message_id or last.status != Message.Status.UNANSWERED:
            raise ValueError("Only the last, unanswered message can be retried.")
        last.status = Message.Status.COMPLETE
        last.error = ""
        last.save(update_fields=["status", "error"])
        services.broadcast(conversation.pk, {"type": "chat.message", "message_id": last.pk})
    return last


def edit_and_resend(
    conversation: Conversation, message_id: int, text: str, author: AbstractBaseUser
) -> Message:
    """Supersede the user message and everything after it; add the edited text as a new message."""
    with transaction.atomic():
        _check_not_busy(Conversation.objects.select_for_update().get(pk=conversation.pk))
        target = get_visible_message(conversation, message_id)
        if target is None or not can_edit(target, conversation, author):
            raise ValueError("You can edit only your own messages.")
        supersede(conversation, visible_messages(conversation).filter(pk__gte=target.pk))
        message = services.add_user_message(conversation, text, author=author)
        message.version_of_id = version_root(target)
        message.save(update_fields=["version_of"])
        return message


def mark_unanswered(message: Message, reason: str) -> None:
    """The model could not take the reply (queue full, still loading, too long): keep the message."""
    message.status = Message.Status.UNANSWERED
    message.error = reason
    message.save(update_fields=["status", "error"])
    services.broadcast(message.conversation_id, {"type": "chat.message", "message_id": message.pk})


def prompt_messages(conversation: Conversation) -> list[dict[str, Any]]:
    """The conversation as chat messages for the model, oldest first, without the system prompt.

    Left out: superseded messages, unanswered user messages other than the last, and answers
    with no text. System messages (from an API call's log) are kept; ``replies.build_prompt`` puts
    them first. An answer carries its generated ids (the KV cache is reused from them).
    """
    rows = list(visible_messages(conversation))
    out: list[dict[str, Any]] = []
    for i, m in enumerate(rows):
        if m.role == Message.Role.USER:
            if m.status == Message.Status.UNANSWERED and i != len(rows) - 1:
                continue
            out.append({"role": "user", "content": m.content})
        elif m.role == Message.Role.SYSTEM:
            out.append({"role": "system", "content": m.content})
        elif m.role == Message.Role.ASSISTANT and m.content:
            item: dict[str, Any] = {"role": "assistant", "content": m.content}
            if m.status == Message.Status.COMPLETE and m.token_ids is not None:
                item["token_ids"] = m.token_ids
            out.append(item)
    return out
