"""The conversation data as a user may see it: reads only (writes are in conversations/actions.py).

The ``get_<object>_for_user`` helpers answer 404 for a forbidden object and a missing one alike, so
there is no existence oracle.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.db import connections, router
from django.db.models import Q, QuerySet
from django.http import Http404

from conversations.models import ApiKey, Conversation, Membership, Message, Team

SEARCH_LIMIT = 100


# --- The browser chat --------------------------------------------------------------------------


def teams_of(user: AbstractBaseUser) -> list[Team]:
    return list(Team.objects.filter(memberships__user=user).order_by("name"))


def sidebar_conversations(
    user: AbstractBaseUser, team: Team, query: str = "", source: str = Conversation.Source.WEB
) -> QuerySet[Conversation]:
    """The user's browser conversations in ``team`` and the team's shared ones, newest first;
    ``query`` searches titles and the text of visible messages. (API calls are logged as
    conversations too; they stay out of the default list, which would otherwise fill with scripts'
    calls: ``source="api"`` lists the user's own calls, made with their keys in ``team``.)
    """
    if source == Conversation.Source.API:
        conversations = visible_conversations(user).filter(
            team=team, source=Conversation.Source.API, owner=user
        )
    else:
        conversations = visible_conversations(user).filter(team=team, source=Conversation.Source.WEB)
    query = query.strip()
    if query:
        matching = Message.objects.filter(content__icontains=query, superseded_at__isnull=True).values(
            "conversation_id"
        )
        conversations = conversations.filter(Q(title__icontains=query) | Q(pk__in=matching))
    return conversations.select_related("owner").order_by("-updated")[:SEARCH_LIMIT]


def visible_messages(conversation: Conversation) -> QuerySet[Message]:
    return conversation.messages.filter(superseded_at__isnull=True).order_by("id")


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


def get_conversation_for_owner(user: AbstractBaseUser, conversation_id: int) -> Conversation:
    """The conversation, for an owner-only action: 404 for whoever cannot see it, 403 for a teammate."""
    conversation = get_conversation_for_user(user, conversation_id)
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


def prompt_messages(conversation: Conversation, new_user_text: str | None = None) -> list[dict[str, Any]]:
    """The conversation as chat messages for the model, oldest first, without the system prompt.

    Left out: superseded messages, unanswered user messages other than the last, and answers
    with no text. System messages (from an API call's log) are kept; ``replies.build_prompt`` puts
    them first. An answer carries its generated ids (the KV cache is reused from them).
    ``new_user_text``: a user message not written yet, as if it were the last.
    """
    rows = _history(conversation.pk)
    if new_user_text is not None:
        rows.append((Message.Role.USER, new_user_text, Message.Status.COMPLETE, None))
    out: list[dict[str, Any]] = []
    for i, (role, content, status, token_ids) in enumerate(rows):
        if role == Message.Role.USER:
            if status == Message.Status.UNANSWERED and i != len(rows) - 1:
                continue
            out.append({"role": "user", "content": content})
        elif role == Message.Role.SYSTEM:
            out.append({"role": "system", "content": content})
        elif role == Message.Role.ASSISTANT and content:
            item: dict[str, Any] = {"role": "assistant", "content": content}
            if status == Message.Status.COMPLETE and token_ids is not None:
                item["token_ids"] = token_ids
            out.append(item)
    return out


# The four columns ``prompt_messages`` needs, not whole rows: it runs on the way to every reply's
# first token. A stand-in conversation id, unlike any real one, marks where each read's id goes.
_HISTORY_COLUMNS = ("role", "content", "status", "token_ids")
_HISTORY_STAND_IN = -1_999_999_905


def _history(conversation_id: int) -> list[tuple[Any, ...]]:
    """``visible_messages(conversation).values_list(*_HISTORY_COLUMNS)``: the ORM's SQL, built once
    per database (``_history_sql``), run with this conversation's id. Building the query cost more
    than running it (on PostgreSQL, in-process: bench/writes.py's figures are in the README)."""
    from conversations.actions import from_db  # (actions imports this module)

    alias = router.db_for_read(Message)
    with connections[alias].cursor() as cursor:
        cursor.execute(_history_sql(alias), [conversation_id])
        rows = cursor.fetchall()
    return [(*row[:3], from_db(Message, "token_ids", row[3])) for row in rows]


@functools.cache
def _history_sql(alias: str) -> str:
    found = Message.objects.filter(conversation_id=_HISTORY_STAND_IN, superseded_at__isnull=True)
    query = found.order_by("id").values_list(*_HISTORY_COLUMNS).query
    sql, params = query.get_compiler(using=alias).as_sql()
    if list(params) != [_HISTORY_STAND_IN] or str(_HISTORY_STAND_IN) in sql:
        raise RuntimeError(f"the history's query does not take the conversation as its one parameter: {sql}")
    return sql


# --- Teams, keys, conversations and messages a user may see (404 for the others) ----------------


def get_team_for_user(user: AbstractBaseUser, team_id: int) -> Team:
    try:
        return Team.objects.get(pk=team_id, memberships__user=user)
    except Team.DoesNotExist:
        raise Http404("No such team") from None


def get_api_key_for_user(user: AbstractBaseUser, key_id: int) -> ApiKey:
    try:
        return ApiKey.objects.get(pk=key_id, user=user)
    except ApiKey.DoesNotExist:
        raise Http404("No such API key") from None


def visible_conversations(user: AbstractBaseUser) -> QuerySet[Conversation]:
    """The conversations ``user`` may read: their own private ones, and their teams' shared ones
    (not deleted).

    Team conversations stay with the team: one shared with a team is visible only to the team's
    members, its owner included, so a member removed from the team loses the shared conversations
    he owned (the team and its reviewers keep them). His private conversations stay his."""
    return visible_conversations_of(user.pk)


def visible_conversations_of(user_id: int) -> QuerySet[Conversation]:
    """``visible_conversations`` of the user with this id."""
    teams = Membership.objects.filter(user_id=user_id).values("team_id")
    return Conversation.objects.filter(
        Q(owner_id=user_id, visibility=Conversation.Visibility.PRIVATE)
        | Q(team__in=teams, visibility=Conversation.Visibility.TEAM),
        deleted_at__isnull=True,
    )


def get_conversation_for_user(user: AbstractBaseUser, conversation_id: int) -> Conversation:
    try:
        return visible_conversations(user).get(pk=conversation_id)
    except Conversation.DoesNotExist:
        raise Http404("No such conversation") from None


def get_message_for_user(user: AbstractBaseUser, message_id: int) -> Message:
    try:
        return Message.objects.select_related("conversation").get(
            pk=message_id, conversation__in=visible_conversations(user)
        )
    except Message.DoesNotExist:
        raise Http404("No such message") from None
