"""Every write to the conversation data goes through here, and broadcasts after the commit.

Views, the websocket consumer, the live side (conversations/live/) and the API call these (from
async code through ``database_sync_to_async``). Reads are in conversations/queries.py.

Decisions the chat page relies on:
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

import functools
import hashlib
import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.apps import apps as django_apps
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, connection, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from conversations import queries, sidebar
from conversations.fragments import message_html
from conversations.models import ApiKey, Conversation, Membership, Message, Team

KEY_PREFIX = "csk-"  # chatsite key
PREFIX_CHARS = 12
LAST_USED_RESOLUTION = timedelta(minutes=1)  # at most one last_used_at write per key per minute
OWNER_PROCESS = f"{socket.gethostname()}:{os.getpid()}"
# What a second reply in one conversation is told (here, and by the live side).
BUSY_MESSAGE = "A reply is being written in this conversation: wait for it, or press Stop."

log = logging.getLogger(__name__)

STALE_AFTER = 30.0  # seconds without a heartbeat after which a 'streaming' row is interrupted
TITLE_CHARS = 60


def group_name(conversation_id: int) -> str:
    return f"conversation-{conversation_id}"


def send_on_commit(group: str, event: dict[str, Any]) -> None:
    """Send ``event`` to a channel-layer group once the current transaction commits."""
    together = getattr(_together, "events", None)
    if together is not None:  # (inside ``_sent_together``)
        together.append((group, event))
        return

    def send() -> None:
        layer = get_channel_layer()
        if layer is not None:
            async_to_sync(layer.group_send)(group, event)

    # Robust: the write is committed whatever happens to the send (Redis down, say); a failed send
    # is logged, and must not turn a committed write into an error.
    transaction.on_commit(send, robust=True)


_together = threading.local()


@contextmanager
def _sent_together() -> Iterator[None]:
    """What ``send_on_commit`` is given inside, sent in order when it ends, in one trip to the event
    loop (each send is a trip of its own otherwise: a thread hop and back). Only outside a
    transaction, where what is written is committed at once and nothing rolls back."""
    assert not connection.in_atomic_block
    _together.events = events = []
    try:
        yield
    finally:
        del _together.events
    layer = get_channel_layer()
    if layer is None or not events:
        return

    async def send_all() -> None:
        for group, event in events:
            await layer.group_send(group, event)

    try:
        async_to_sync(send_all)()
    except Exception:  # as a robust on_commit: the write is committed whatever the send does
        log.exception("could not send %d events", len(events))


def broadcast(conversation_id: int, event: dict[str, Any]) -> None:
    """Send ``event`` to the conversation's group once the current transaction commits."""
    send_on_commit(group_name(conversation_id), event)


# --- Teams ---------------------------------------------------------------------------------------


def create_team(name: str, *, admin: AbstractBaseUser | None = None) -> Team:
    with transaction.atomic():
        team = Team.objects.create(name=name)
        if admin is not None:
            Membership.objects.create(team=team, user=admin, role=Membership.Role.ADMIN)
    return team


def add_member(team: Team, user: AbstractBaseUser, role: str = Membership.Role.MEMBER) -> Membership:
    membership, _ = Membership.objects.get_or_create(team=team, user=user, defaults={"role": role})
    return membership


class NoDefaultTeam(Exception):
    """The user belongs to several teams: the caller must name one."""


def default_team(user: AbstractBaseUser) -> Team:
    """The user's only team; a user with no team gets a personal one (as its admin)."""
    teams = list(Team.objects.filter(memberships__user=user)[:2])
    if len(teams) == 1:
        return teams[0]
    if teams:
        raise NoDefaultTeam(f"{user} belongs to several teams; name one")
    name = user.get_username()
    while Team.objects.filter(name=name).exists():
        name = f"{user.get_username()}-{secrets.token_hex(2)}"
    return create_team(name, admin=user)


# --- API keys ------------------------------------------------------------------------------------


def hash_secret(secret: str) -> str:
    """What is stored of a secret shown once (API keys, invite tokens): its SHA-256."""
    return hashlib.sha256(secret.encode()).hexdigest()


SELF: Any = object()  # ``by`` for a key's own user (the keys page)


def create_api_key(
    user: AbstractBaseUser, team: Team, name: str = "", *, by: AbstractBaseUser | None = SELF
) -> tuple[ApiKey, str]:
    """Make a key for ``user`` in ``team`` and return it with its plain text (shown once, never stored).
    ``by``: who made it (the audit's actor; None for an operator's command)."""
    if not Membership.objects.filter(team=team, user=user).exists():
        raise ValueError(f"{user} is not a member of {team}")
    while True:
        prefix = secrets.token_hex(PREFIX_CHARS // 2)
        if not ApiKey.objects.filter(prefix=prefix).exists():
            break
    secret = secrets.token_urlsafe(32)  # 256 bits
    with transaction.atomic():
        key = ApiKey.objects.create(
            user=user, team=team, name=name, prefix=prefix, secret_hash=hash_secret(secret)
        )
        _audit_key(key, "key_created", user if by is SELF else by)
    return key, f"{KEY_PREFIX}{prefix}-{secret}"


def revoke_api_key(key: ApiKey, *, by: AbstractBaseUser | None = SELF) -> None:
    """``by``: who revoked it (the audit's actor; None for an operator's command)."""
    if key.revoked_at is None:
        with transaction.atomic():
            key.revoked_at = timezone.now()
            key.save(update_fields=["revoked_at"])
            _audit_key(key, "key_revoked", key.user if by is SELF else by)


def _audit_key(key: ApiKey, action: str, by: AbstractBaseUser | None) -> None:
    from review.services import audit  # the audit trail lives in review, which builds on this app

    audit(
        by,
        action,
        team=key.team,
        object_repr=f"API key {key.prefix} of {key.user.get_username()}",
        detail=key.name,
        filters={"api_key": key.pk},
    )


def authenticate_api_key(raw: str) -> ApiKey | None:
    """The active key whose plain text is ``raw``, or None. Reads only, in one indexed query (the
    key's prefix is unique): the key, whether its user is active and still in its team, and the
    models the team may use (``key.allowed_models``, None: all; ``upstreams.TeamModels``, reached
    through ``Team.model_choice`` so that this app needs no import of upstreams), and whether any
    usage limit applies to its calls (``key.limits_apply``: when none does, the call's reservation
    reads no limits, review/limits.py). The key comes
    back without its user and team loaded (``user_id`` and ``team_id`` are set): every one of
    these milliseconds is on the way to the first token."""
    if not raw.startswith(KEY_PREFIX):
        return None
    prefix, dash, secret = raw[len(KEY_PREFIX) :].partition("-")
    if len(prefix) != PREFIX_CHARS or not dash or not secret:
        return None
    with connection.cursor() as cursor:
        cursor.execute(_key_check_sql(), [prefix])
        row = cursor.fetchone()
    # Hash and compare even when the prefix is unknown, so the timing says nothing about it.
    expected = row[1] if row is not None else "0" * 64
    if not secrets.compare_digest(hash_secret(secret), expected) or row is None:
        return None
    pk, _, user_id, team_id, name, last_used_at, revoked, user_active, user_in_team, models, limited = row
    # A key is for one team: it stops with its user's membership, however that was removed.
    if revoked or not user_active or not user_in_team:
        return None
    last_used_at = from_db(ApiKey, "last_used_at", last_used_at)
    key = ApiKey(pk=pk, user_id=user_id, team_id=team_id, name=name, prefix=prefix, last_used_at=last_used_at)
    key._state.adding, key._state.db = False, connection.alias  # as if read by the ORM
    models = from_db(team_models_model(), "models", models)
    key.allowed_models = None if models is None else list(models)
    key.limits_apply = bool(limited)
    return key


def team_models_model() -> Any:
    """``upstreams.TeamModels``, reached through ``Team.model_choice`` (this app imports no upstreams)."""
    return Team._meta.get_field("model_choice").related_model


def from_db(model: Any, field_name: str, value: Any) -> Any:
    """A raw query's ``value`` of ``model.field_name`` as the ORM would give it: through the
    backend's and the field's own converters (SQLite's datetime text made aware, a JSON column's
    text decoded), the same ones Django's compiler applies."""
    col = model._meta.get_field(field_name).get_col(model._meta.db_table)
    for convert in connection.ops.get_db_converters(col) + col.get_db_converters(connection):
        value = convert(value, col, connection)
    return value


def limit_applies_sql(team: str, user: str, key: str) -> str:
    """SQL: the row ``l`` of the usage limits' table (``review.Limit``) applies to a request of team
    ``team``, user ``user`` and API key ``key`` (SQL expressions; a NULL matches nothing): the team's
    own limit, the user's own (everywhere), the user's within that team, or the key's. The one
    definition, for review/limits.py ``limits_for`` (which reads those limits) and for the API key
    check (which tells whether there are any)."""
    return (
        f"(l.team_id = {team} AND l.user_id IS NULL AND l.api_key_id IS NULL)"
        f" OR (l.user_id = {user} AND l.team_id IS NULL AND l.api_key_id IS NULL)"
        f" OR (l.team_id = {team} AND l.user_id = {user})"
        f" OR (l.api_key_id = {key})"
    )


def any_limit_applies_sql(team: str, user: str, key: str, quote_name: Callable[[str], str]) -> str:
    """SQL: whether any usage limit applies (``limit_applies_sql``), as one ``EXISTS``: for the API
    key check and the websocket's access check, so that a request without a limit (most of them)
    is spared the limits' own query. review.Limit by name: review sits above this app
    (ARCHITECTURE.md)."""
    table = quote_name(django_apps.get_model("review", "Limit")._meta.db_table)
    return f"EXISTS (SELECT 1 FROM {table} l WHERE {limit_applies_sql(team, user, key)})"


@functools.cache
def _key_check_sql() -> str:
    def table(model: Any) -> str:
        return connection.ops.quote_name(model._meta.db_table)

    team_models = team_models_model()
    user_model = ApiKey._meta.get_field("user").related_model
    user_pk = connection.ops.quote_name(user_model._meta.pk.column)
    return (
        "SELECT k.id, k.secret_hash, k.user_id, k.team_id, k.name, k.last_used_at,"
        " k.revoked_at IS NOT NULL, u.is_active,"
        f" EXISTS (SELECT 1 FROM {table(Membership)} m"
        " WHERE m.user_id = k.user_id AND m.team_id = k.team_id),"
        " tm.models,"
        f" {any_limit_applies_sql('k.team_id', 'k.user_id', 'k.id', connection.ops.quote_name)}"
        f" FROM {table(ApiKey)} k JOIN {table(user_model)} u ON u.{user_pk} = k.user_id"
        f" LEFT JOIN {table(team_models)} tm ON tm.team_id = k.team_id"
        " WHERE k.prefix = %s"
    )


def key_use_due(key: ApiKey) -> bool:
    """Whether ``record_key_use`` would write (at most once a minute per key)."""
    return key.last_used_at is None or timezone.now() - key.last_used_at >= LAST_USED_RESOLUTION


def record_key_use(key: ApiKey) -> None:
    """Note that ``key`` was used (kept apart from authentication, so a refused call writes nothing)."""
    now = timezone.now()
    if key_use_due(key):
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now


# --- Conversations and messages ------------------------------------------------------------------


def start_conversation(
    owner: AbstractBaseUser,
    team: Team,
    *,
    source: str = Conversation.Source.WEB,
    title: str = "",
    model_id: str = "",
    **fields: Any,
) -> Conversation:
    """``fields``: the other Conversation fields (visibility, system_prompt, temperature, …)."""
    return Conversation.objects.create(
        owner=owner, team=team, source=source, title=title[:200], model_id=model_id, **fields
    )


def add_message(
    conversation: Conversation,
    role: str,
    content: str,
    *,
    name: str = "",
    author: AbstractBaseUser | None = None,
    shown_to_author: bool = False,
) -> Message:
    """``shown_to_author``: the event carries the message as its author's page shows it
    (``_new_message_event``; not for a message that is to become a new version of another)."""
    message = Message.objects.create(
        conversation=conversation,
        role=role,
        content=content,
        name=name,
        author=author,
        status=Message.Status.COMPLETE,
    )
    broadcast(conversation.pk, _new_message_event(conversation, message, shown_to_author=shown_to_author))
    return message


def _new_message_event(
    conversation: Conversation, message: Message, *, shown_to_author: bool = True
) -> dict[str, Any]:
    """The ``chat.message`` of a new message; with ``shown_to_author``, a user message's HTML as its
    author's page shows it (with Edit), rendered once here. The author's socket forwards it instead
    of reading the row and rendering it again while the slot evaluates the prompt; a teammate's
    socket still reads it and renders it for its own viewer."""
    event: dict[str, Any] = {"type": "chat.message", "message_id": message.pk}
    if shown_to_author and message.author_id is not None and message.version_of_id is None:
        event["author_id"] = message.author_id
        event["author_html"] = message_html(message, conversation, message.author, [message.pk])
    return event


def add_user_message(
    conversation: Conversation, content: str, *, author: AbstractBaseUser | None = None
) -> Message:
    # No savepoint when it runs inside another transaction (nothing here catches an error and goes
    # on): on PostgreSQL each savepoint is two more round trips on the way to a reply.
    with transaction.atomic(savepoint=False):
        message = add_message(conversation, Message.Role.USER, content, author=author)
        conversation.save(update_fields=["updated"])
    return message


class ReplyInProgress(Exception):
    """A reply is already streaming in this conversation (started by this or another process)."""


def start_assistant_messages(
    conversation: Conversation,
    n: int,
    *,
    params: dict[str, Any],
    prompt_tokens: int,
    new_conversation: bool = False,
    version_of: int | None = None,
    tools: dict[str, Any] | None = None,
) -> list[Message]:
    """Create the ``n`` assistant messages (status streaming) a generation will fill in.

    The database holds one streaming answer per conversation and choice (the constraint
    ``one_streaming_reply_per_choice``), so of two processes starting a reply in one conversation
    at once, one gets ``ReplyInProgress``. A streaming row whose heartbeat is stale (its process
    died) is marked interrupted first, so it does not block the conversation. ``version_of``: the
    first version of the answer this one regenerates (``prepare_regenerate``). ``new_conversation``:
    the conversation was made in the same transaction (an API call's), so it has no stale reply and
    no page open on it to tell: nothing is broadcast (a broadcast is a hop to the event loop from
    this thread, while the slot prefills).
    """
    try:
        # A new conversation has no other reply (no IntegrityError to recover from): no savepoint
        # of its own inside the call's transaction (each costs two trips to the database).
        with transaction.atomic(savepoint=not new_conversation):
            if not new_conversation:
                _interrupt_stale_of(conversation)
            return _new_replies(
                conversation, n, params, prompt_tokens, version_of, announce=not new_conversation, tools=tools
            )
    except IntegrityError as exc:
        raise _in_progress(conversation, exc) from None


def _new_replies(
    conversation: Conversation,
    n: int,
    params: dict[str, Any],
    prompt_tokens: int,
    version_of: int | None,
    *,
    announce: bool,
    tools: dict[str, Any] | None = None,
) -> list[Message]:
    """The rows of ``start_assistant_messages`` (``announce``: tell the pages open on it)."""
    messages = _streaming_replies(conversation, n, params, prompt_tokens, version_of, tools)
    for message in messages:  # one by one: bulk_create gives no ids on every backend
        message.save()
        if announce:
            broadcast(conversation.pk, _new_reply_event(conversation, message))
    return messages


def _streaming_replies(
    conversation: Conversation,
    n: int,
    params: dict[str, Any],
    prompt_tokens: int,
    version_of: int | None,
    tools: dict[str, Any] | None,
) -> list[Message]:
    """``n`` new reply rows (status streaming, this process's, choices 0 to n - 1), not saved."""
    now = timezone.now()
    return [
        Message(
            conversation=conversation,
            role=Message.Role.ASSISTANT,
            choice_index=i,
            params=params,
            prompt_tokens=prompt_tokens,
            status=Message.Status.STREAMING,
            owner_process=OWNER_PROCESS,
            heartbeat_at=now,
            version_of_id=version_of,
            tools=tools,
        )
        for i in range(n)
    ]


def _in_progress(conversation: Conversation, error: IntegrityError) -> Exception:
    """What an IntegrityError of a new reply's row means (its transaction rolled back): a reply
    already streams here (``ReplyInProgress``), unless the conversation is gone (``error`` then)."""
    if not Conversation.objects.filter(pk=conversation.pk).exists():
        return error
    return ReplyInProgress(BUSY_MESSAGE)


def _interrupt_stale_of(conversation: Conversation) -> None:
    """``interrupt_stale_messages`` of one conversation: its replies whose process died."""
    interrupt_stale_messages(timezone.now() - timedelta(seconds=STALE_AFTER), conversation_id=conversation.pk)


def _new_reply_event(conversation: Conversation, message: Message) -> dict[str, Any]:
    """The ``chat.message`` of a new streaming reply. A first version shows the same to every
    viewer (no edit, no versions, no author): its HTML is rendered once here, and each page's
    consumer forwards it, instead of reading the row and rendering it again for every viewer while
    the slot evaluates the prompt."""
    event: dict[str, Any] = {"type": "chat.message", "message_id": message.pk}
    if message.version_of_id is None:
        event["html"] = message_html(message, conversation, None, [message.pk])
    return event


@dataclass(frozen=True)
class ApiCall:
    conversation: Conversation
    replies: list[Message]


def start_api_call(
    key: ApiKey,
    *,
    model_id: str,
    messages: Sequence[dict[str, str]],
    params: dict[str, Any],
    n: int,
    prompt_tokens: int,
    request_user: str = "",
    tools: dict[str, Any] | None = None,
) -> ApiCall:
    """Log one admitted /v1/chat/completions call: the conversation, its messages, n replies
    (``tools``: the tools and response format asked for, kept with each reply). On PostgreSQL,
    outside a transaction, in one statement (``_insert_at_once``)."""
    title = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    conversation = Conversation(
        owner_id=key.user_id,
        team_id=key.team_id,
        source=Conversation.Source.API,
        title=" ".join(title.split())[:80],
        model_id=model_id,
        api_key=key,
        request_user=request_user,
        temperature=params.get("temperature"),
        max_tokens=params.get("max_tokens"),
    )
    logged = [
        Message(
            conversation=conversation,
            role=m["role"],
            content=m["content"],
            name=m.get("name", ""),
            status=Message.Status.COMPLETE,
        )
        for m in messages
    ]
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        replies = _streaming_replies(conversation, n, params, prompt_tokens, None, tools)
        _insert_at_once(conversation, [*logged, *replies])
        return ApiCall(conversation, replies)
    # The key's last use is not written here (``record_key_use``, at the call's end): an UPDATE of
    # the key's row in this transaction costs time on the way to the first token, and would queue
    # every call of one key behind the others' commits. No savepoint inside a caller's transaction:
    # a failure here fails it whole.
    with transaction.atomic(savepoint=False):
        conversation.save(force_insert=True)
        for message in logged:
            message.conversation = conversation  # (its id, now that it has one)
        Message.objects.bulk_create(logged)
        replies = start_assistant_messages(
            conversation, n, params=params, prompt_tokens=prompt_tokens, new_conversation=True, tools=tools
        )
    return ApiCall(conversation, replies)


def discard_api_call(call: ApiCall) -> None:
    """Delete a logged call that never went through (its upstream failed, or its client went away,
    before the first token): the call leaves nothing in the log, as one refused before any write."""
    Conversation.objects.filter(pk=call.conversation.pk).delete()


def record_upstream(message_ids: Iterable[int], name: str) -> None:
    """Name, in the replies' params, the upstream connection that took their call."""
    with transaction.atomic():
        for message in Message.objects.select_for_update().filter(pk__in=list(message_ids)):
            Message.objects.filter(pk=message.pk).update(params={**message.params, "upstream": name})


def checkpoint_assistant_message(message_id: int, content: str) -> None:
    """Save the text so far and the heartbeat of a streaming reply."""
    Message.objects.filter(pk=message_id, status=Message.Status.STREAMING).update(
        content=content, heartbeat_at=timezone.now(), owner_process=OWNER_PROCESS
    )


@dataclass(frozen=True)
class Outcome:
    """How a generation ended, in the terms the Message row records."""

    status: str
    content: str
    finish_reason: str = ""
    token_ids: list[int] | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    queue_wait: float | None = None
    ttft: float | None = None
    duration: float | None = None
    error: str = ""


def finish_assistant_message(
    message_id: int, outcome: Outcome, on_commit: Callable[[], None] | None = None
) -> None:
    """Write the final text, token ids, usage, timings and status in one transaction.

    ``on_commit`` runs once it commits, before the viewers are told (``chat.finished``)."""
    with transaction.atomic():
        if on_commit is not None:
            transaction.on_commit(on_commit)  # (callbacks run in the order they were added)
        message = Message.objects.select_for_update().get(pk=message_id)
        message.status = outcome.status
        message.content = outcome.content
        message.finish_reason = outcome.finish_reason
        message.token_ids = outcome.token_ids
        if outcome.prompt_tokens is not None:
            message.prompt_tokens = outcome.prompt_tokens
        message.completion_tokens = outcome.completion_tokens
        message.queue_wait = outcome.queue_wait
        message.ttft = outcome.ttft
        message.duration = outcome.duration
        message.error = outcome.error
        message.heartbeat_at = timezone.now()
        message.save(
            update_fields=[
                "status",
                "content",
                "finish_reason",
                "token_ids",
                "prompt_tokens",
                "completion_tokens",
                "queue_wait",
                "ttft",
                "duration",
                "error",
                "heartbeat_at",
            ]
        )
        Conversation.objects.filter(pk=message.conversation_id).update(updated=timezone.now())
        broadcast(
            message.conversation_id,
            {
                "type": "chat.finished",
                "message_id": message.pk,
                "choice_index": message.choice_index,
                "status": outcome.status,
                "finish_reason": outcome.finish_reason,
            },
        )


def interrupt_stale_messages(older_than: datetime, *, conversation_id: int | None = None) -> int:
    """Mark replies still 'streaming' whose heartbeat stopped before ``older_than`` as interrupted
    (of one conversation, or of all), and tell each one's open pages (``chat.finished``, on commit).

    Only a stale heartbeat counts, so a sibling process's live stream is never touched.
    """
    stale = Message.objects.filter(status=Message.Status.STREAMING, heartbeat_at__lt=older_than)
    if conversation_id is not None:
        stale = stale.filter(conversation_id=conversation_id)
    return _interrupt(stale)


def _interrupt(streaming: QuerySet[Message]) -> int:
    with transaction.atomic(savepoint=False):  # (add_user_message says why)
        rows = list(streaming.select_for_update().values_list("pk", "conversation_id", "choice_index"))
        if not rows:
            return 0
        count = Message.objects.filter(
            pk__in=[pk for pk, _, _ in rows], status=Message.Status.STREAMING
        ).update(status=Message.Status.INTERRUPTED, error="the server stopped during the reply")
        for pk, conversation_id, choice_index in rows:
            broadcast(
                conversation_id,
                {
                    "type": "chat.finished",
                    "message_id": pk,
                    "choice_index": choice_index,
                    "status": Message.Status.INTERRUPTED,
                    "finish_reason": "",
                },
            )
    return count


def interrupt_orphaned_messages() -> int:
    """At start-up: mark as interrupted the replies still 'streaming' that belong to a process of
    this host that no longer runs (after a kill -9 the heartbeat is still fresh for a while).

    Rows of live processes, and of other hosts (left to the stale-heartbeat rule), are untouched.
    """
    host = socket.gethostname()
    dead = []
    owners = (
        Message.objects.filter(status=Message.Status.STREAMING, owner_process__startswith=f"{host}:")
        .values_list("owner_process", flat=True)
        .distinct()
    )
    for owner in owners:
        pid = owner.rpartition(":")[2]
        if owner != OWNER_PROCESS and pid.isdigit() and not _process_alive(int(pid)):
            dead.append(owner)
    if not dead:
        return 0
    return _interrupt(Message.objects.filter(status=Message.Status.STREAMING, owner_process__in=dead))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def record_tool_calls(message_id: int, record: dict[str, Any], calls: list[dict[str, Any]]) -> None:
    """Add the tool calls a finished reply made to its record."""
    Message.objects.filter(pk=message_id).update(tools={**record, "tool_calls": calls})


# --- The browser chat: conversation writes (owner only; the views check) and message writes ---------


class Busy(Exception):
    """A reply is already being generated in this conversation."""


def current_team(user: AbstractBaseUser, team_id: int | None) -> Team:
    """The team the user chose (``team_id`` from the session) if they are still in it, else their first
    team; a user with no team gets a personal one."""
    teams = queries.teams_of(user)
    for team in teams:
        if team.pk == team_id:
            return team
    if teams:
        return teams[0]
    return default_team(user)


def create_conversation(owner: AbstractBaseUser, team: Team) -> Conversation:
    if not Membership.objects.filter(team=team, user=owner).exists():
        raise PermissionDenied("Not a member of this team.")
    with transaction.atomic():
        conversation = start_conversation(owner, team, source=Conversation.Source.WEB)
        notify_lists(conversation)
    return conversation


def discard_empty_conversation(conversation: Conversation) -> None:
    """Remove a conversation made for a first message that was then refused (it holds nothing)."""
    with transaction.atomic():
        if not conversation.messages.exists():
            Conversation.objects.filter(pk=conversation.pk).delete()
            notify_lists(conversation)


def notify_lists(conversation: Conversation, fields: Iterable[str] = ()) -> None:
    """Tell (on commit) every open conversation list that shows or showed ``conversation`` that it
    changed: its owner's and, when it is or was shared, its team's (conversations/sidebar.py)."""
    send_on_commit(sidebar.user_group(conversation.owner_id), sidebar.CHANGED)
    if conversation.visibility == Conversation.Visibility.TEAM or "visibility" in fields:
        send_on_commit(sidebar.team_group(conversation.team_id), sidebar.CHANGED)


def _changed(conversation: Conversation, fields: list[str]) -> None:
    conversation.save(update_fields=[*fields, "updated"])
    _announce_change(conversation, fields)


def _announce_change(conversation: Conversation, fields: list[str]) -> None:
    """Tell the pages open on ``conversation`` and, for what the lists show, the lists. A new title
    (with the model a first reply names) comes with the event: it changes no one's access, and the
    pages show it without checking theirs again. Other changes may take access away: each page
    checks."""
    event: dict[str, Any] = {"type": "chat.conversation", "conversation_id": conversation.pk}
    if set(fields) <= {"title", "model_id"}:
        event["title"] = conversation.title
    broadcast(conversation.pk, event)
    if {"title", "visibility", "deleted_at"} & set(fields):
        notify_lists(conversation, fields)


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


def _check_not_busy(conversation: Conversation) -> list[int]:
    """One generation at a time per conversation: a streaming row whose heartbeat is fresh (in any
    process) means one is running. Returns the streaming rows whose heartbeat is stale (their
    process died), which the interrupted-sweep or the next reply's start marks interrupted: read
    in the same query, so that a start finding none (the usual case) needs no query for them."""
    fresh = timezone.now() - timedelta(seconds=STALE_AFTER)
    streaming = conversation.messages.filter(status=Message.Status.STREAMING)
    beats = list(streaming.values_list("pk", "heartbeat_at"))
    if any(beat is not None and beat >= fresh for _, beat in beats):
        raise Busy(BUSY_MESSAGE)
    return [pk for pk, beat in beats if beat is not None]


def post_user_message(conversation: Conversation, text: str, author: AbstractBaseUser) -> Message:
    """Commit the user's message (and the title, from the first one) before anything is generated."""
    return _post_user_message(conversation, text, author)[0]


def first_title(text: str) -> str:
    """A conversation's title, from its first message."""
    return " ".join(text.split())[:TITLE_CHARS]


def _post_user_message(
    conversation: Conversation, text: str, author: AbstractBaseUser
) -> tuple[Message, list[int]]:
    """``post_user_message``, and the conversation's stale streaming rows (``_check_not_busy``).

    The conversation's row is updated once: its time, with the title from its first message and
    the model its first reply was read for (``conversation.model_id``, set but not written by
    ``replies._read_for_reply``, so that nothing is written before the reply's job is submitted)."""
    with transaction.atomic(savepoint=False):  # (add_user_message says why)
        locked = Conversation.objects.select_for_update().get(pk=conversation.pk)
        stale = _check_not_busy(locked)
        message = add_message(locked, Message.Role.USER, text, author=author, shown_to_author=True)
        fields = []
        if not locked.title:
            locked.title = first_title(text)
            fields.append("title")
        if not locked.model_id and conversation.model_id:
            locked.model_id = conversation.model_id
            fields.append("model_id")
        if "title" in fields:
            _changed(locked, fields)  # (the pages open on it and the lists show the new title)
        else:
            locked.save(update_fields=[*fields, "updated"])
        conversation.title = locked.title
    return message, stale


def post_user_message_with_reply(
    conversation: Conversation,
    text: str,
    author: AbstractBaseUser,
    *,
    params: dict[str, Any],
    prompt_tokens: int,
) -> tuple[Message, Message]:
    """``post_user_message`` and its reply's streaming row (``start_assistant_messages``) in one
    transaction, for a message whose job was admitted before it was written: a crash leaves both
    or neither, never a reply without its question. ``Busy`` or ``ReplyInProgress``: neither.

    It runs while the slot evaluates the prompt, on the other core: the fewest statements (on
    PostgreSQL 7, against 10 as the two calls): the busy check also finds the stale rows to
    interrupt (usually none, and then no query for them), and no savepoint around the reply's row
    (its IntegrityError rolls the whole transaction back, as it should). On PostgreSQL, outside a
    transaction, one statement does it all when no reply streams there (``_post_with_reply_at_once``)."""
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        written = _post_with_reply_at_once(conversation, text, author, params, prompt_tokens)
        if written is not None:
            return written
    try:
        with transaction.atomic():
            message, stale = _post_user_message(conversation, text, author)
            if stale:
                _interrupt_stale_of(conversation)
            (reply,) = _new_replies(conversation, 1, params, prompt_tokens, None, announce=True)
    except IntegrityError as exc:
        raise _in_progress(conversation, exc) from None
    return message, reply


def _post_with_reply_at_once(
    conversation: Conversation,
    text: str,
    author: AbstractBaseUser,
    params: dict[str, Any],
    prompt_tokens: int,
) -> tuple[Message, Message] | None:
    """PostgreSQL: ``post_user_message_with_reply`` in one statement, committed on its own, when no
    row of the conversation streams (the usual case); None, having written nothing, otherwise (a
    reply streams, a dead process's row is to be interrupted, or the conversation is gone: the
    general path then finds out which, as before).

    ``bench/writes.py`` on an idle machine, events included: the seven statements of the general
    path took 3.7 ms of this thread's CPU and 1.0 ms of the database's (6.2 ms of wall), all of it
    taken from the prompt's evaluation on the other core; this one 1.5 and 0.7 ms (2.7 ms). It
    locks the conversation's row as the general path does, inserts both rows only if none streams,
    and updates the row's time (with its first title and model) only if they were inserted. A
    reply started by another process after this statement's snapshot fails the unique constraint
    ``one_streaming_reply_per_choice``: the statement then writes nothing and the general path
    answers ``Busy``. The events go out together (``_sent_together``)."""
    message = Message(conversation=conversation, role=Message.Role.USER, content=text, author=author)
    (reply,) = _streaming_replies(conversation, 1, params, prompt_tokens, None, None)
    fields = _columns(Message)
    title = first_title(text)
    args = [conversation.pk, *_prepared(fields, [message, reply]), conversation.pk, Message.Status.STREAMING]
    args += [timezone.now(), title, conversation.model_id, Message.Role.USER, Message.Role.ASSISTANT]
    try:
        with connection.cursor() as cursor:
            cursor.execute(_post_with_reply_sql(), args)
            message.pk, reply.pk, old_title, visibility = cursor.fetchone()
    except IntegrityError:
        return None
    if message.pk is None:
        return None
    _saved(message, reply)
    conversation.visibility = visibility  # (as read under the lock: whose lists to tell)
    conversation.title = old_title or title
    with _sent_together():  # what the general path sends on its commit, in its order
        broadcast(conversation.pk, _new_message_event(conversation, message))  # add_message's
        if not old_title:
            _announce_change(conversation, ["title"])
        broadcast(conversation.pk, _new_reply_event(conversation, reply))
    return message, reply


@functools.cache
def _post_with_reply_sql() -> str:
    """``_post_with_reply_at_once``'s statement (made once)."""
    fields = _columns(Message)
    messages, conversations = _table(Message), _table(Conversation)
    return f"""
        WITH locked AS (
            SELECT id, title, model_id, visibility FROM {conversations} WHERE id = %s FOR UPDATE
        ), added AS (
            INSERT INTO {messages} ({_names(fields)})
            SELECT * FROM (VALUES {_values(fields, 2)}) AS v ({_names(fields)})
            WHERE EXISTS (SELECT 1 FROM locked) AND NOT EXISTS (
                SELECT 1 FROM {messages} WHERE conversation_id = %s AND status = %s
            )
            RETURNING id, role
        ), changed AS (
            UPDATE {conversations} AS c SET
                updated = %s,
                title = CASE WHEN locked.title = '' THEN %s ELSE c.title END,
                model_id = CASE WHEN locked.model_id = '' THEN %s ELSE c.model_id END
            FROM locked WHERE c.id = locked.id AND EXISTS (SELECT 1 FROM added)
            RETURNING locked.title, locked.visibility
        )
        SELECT (SELECT id FROM added WHERE role = %s), (SELECT id FROM added WHERE role = %s),
            (SELECT title FROM changed), (SELECT visibility FROM changed)
    """


def _insert_at_once(conversation: Conversation, messages: list[Message]) -> None:
    """PostgreSQL: insert a new conversation and its messages, in their order, in one statement
    (committed on its own; a failure writes nothing), and give them their ids."""
    conversation_fields, fields = _columns(Conversation), _columns(Message, skip=("conversation",))
    args = _prepared(conversation_fields, [conversation])
    for n, message in enumerate(messages):
        args += [*_prepared(fields, [message]), n]
    with connection.cursor() as cursor:
        cursor.execute(_insert_at_once_sql(len(messages)), args)
        conversation.pk, ids = cursor.fetchone()
    for message, pk in zip(messages, ids, strict=True):
        message.pk, message.conversation = pk, conversation
    _saved(conversation, *messages)


@functools.lru_cache(maxsize=16)
def _insert_at_once_sql(rows: int) -> str:
    """``_insert_at_once``'s statement for ``rows`` messages (made once per number)."""
    conversation_fields, fields = _columns(Conversation), _columns(Message, skip=("conversation",))
    order = ", ".join(f"v.{connection.ops.quote_name(f.column)}" for f in fields)
    return f"""
        WITH made AS (
            INSERT INTO {_table(Conversation)} ({_names(conversation_fields)})
            VALUES {_values(conversation_fields, 1)} RETURNING id
        ), added AS (
            INSERT INTO {_table(Message)} (conversation_id, {_names(fields)})
            SELECT made.id, {order}
            FROM made, (VALUES {_values(fields, rows, "%s::int")}) AS v ({_names(fields)}, n)
            ORDER BY v.n
            RETURNING id
        )
        SELECT (SELECT id FROM made), (SELECT array_agg(id ORDER BY id) FROM added)
    """


# One statement instead of several, for the writes on the way to a reply (PostgreSQL): each value
# is prepared as the ORM's insert would (``pre_save``: the auto_now times) and cast to its column's
# type (a VALUES list's NULL would otherwise be text).


@functools.cache
def _columns(model: type[Any], skip: tuple[str, ...] = ()) -> list[Any]:
    return [f for f in model._meta.concrete_fields if not f.primary_key and f.name not in skip]


def _table(model: type[Any]) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def _names(fields: list[Any]) -> str:
    return ", ".join(connection.ops.quote_name(f.column) for f in fields)


def _values(fields: list[Any], rows: int, *extra: str) -> str:
    row = "(" + ", ".join([*(f"%s::{f.cast_db_type(connection)}" for f in fields), *extra]) + ")"
    return ", ".join([row] * rows)


def _prepared(fields: list[Any], objects: list[Any]) -> list[Any]:
    return [f.get_db_prep_save(f.pre_save(o, True), connection) for o in objects for f in fields]


def _saved(*objects: Any) -> None:
    for obj in objects:
        obj._state.adding, obj._state.db = False, connection.alias


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
        broadcast(conversation.pk, {"type": "chat.superseded", "message_ids": ids})
    return ids


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
        root = queries.version_root(chosen)
        shown = queries.visible_messages(conversation).filter(Q(pk=root) | Q(version_of=root)).first()
        if shown is None:
            raise ValueError("This version belongs to a branch that is not shown.")
        branch = conversation.messages.filter(superseded_at=chosen.superseded_at, pk__gte=chosen.pk)
        restored = list(branch.values_list("pk", flat=True))
        supersede(conversation, queries.visible_messages(conversation).filter(pk__gte=shown.pk))
        Message.objects.filter(pk__in=restored).update(superseded_at=None)
        broadcast(conversation.pk, {"type": "chat.refresh"})


def prepare_regenerate(conversation: Conversation) -> Message | None:
    """Supersede the last answer, so that a new one can be generated; return the user message it
    answered (marked unanswered if the model cannot take the new reply)."""
    with transaction.atomic():
        _check_not_busy(Conversation.objects.select_for_update().get(pk=conversation.pk))
        last = queries.visible_messages(conversation).last()
        if last is None or last.role != Message.Role.ASSISTANT:
            raise ValueError("There is no answer to regenerate.")
        supersede(conversation, [last])
        question = queries.visible_messages(conversation).filter(role=Message.Role.USER).last()
        if question is not None:
            question.answer_version_of = queries.version_root(last)  # the new answer: its next version
            question.replaced_answer = last.pk  # shown again if the new one cannot be started
        return question


def undo_regenerate(conversation: Conversation, question: Message) -> None:
    """The new answer could not be started (``prepare_regenerate`` hid the shown one): show that
    answer again, and the question as answered, as they were."""
    with transaction.atomic():
        if queries.visible_messages(conversation).filter(pk__gt=question.pk).exists():
            return
        replaced = conversation.messages.filter(pk=question.replaced_answer)
        replaced.update(superseded_at=None)
        Message.objects.filter(pk=question.pk).update(status=Message.Status.COMPLETE, error="")
        broadcast(conversation.pk, {"type": "chat.refresh"})


def prepare_retry(conversation: Conversation, message_id: int) -> Message:
    """An unanswered user message, the conversation's last, becomes an ordinary one to answer."""
    with transaction.atomic():
        _check_not_busy(Conversation.objects.select_for_update().get(pk=conversation.pk))
        last = queries.visible_messages(conversation).last()
        if last is None or last.pk != message_id or last.status != Message.Status.UNANSWERED:
            raise ValueError("Only the last, unanswered message can be retried.")
        last.status = Message.Status.COMPLETE
        last.error = ""
        last.save(update_fields=["status", "error"])
        broadcast(conversation.pk, {"type": "chat.message", "message_id": last.pk})
    return last


def edit_and_resend(
    conversation: Conversation, message_id: int, text: str, author: AbstractBaseUser
) -> Message:
    """Supersede the user message and everything after it; add the edited text as a new message."""
    with transaction.atomic():
        _check_not_busy(Conversation.objects.select_for_update().get(pk=conversation.pk))
        target = queries.get_visible_message(conversation, message_id)
        if target is None or not queries.can_edit(target, conversation, author):
            raise ValueError("You can edit only your own messages.")
        supersede(conversation, queries.visible_messages(conversation).filter(pk__gte=target.pk))
        message = add_user_message(conversation, text, author=author)
        message.version_of_id = queries.version_root(target)
        message.save(update_fields=["version_of"])
        return message


def mark_unanswered(message: Message, reason: str = "", *, never_fits: bool = False) -> None:
    """The model could not take the reply (queue full, still loading, too long): keep the message.
    ``never_fits``: it is longer than the model's context (the page offers no Retry then)."""
    message.status = Message.Status.UNANSWERED
    message.error = reason
    message.params = {**(message.params or {}), "never_fits": True} if never_fits else message.params
    message.save(update_fields=["status", "error", "params"])
    broadcast(message.conversation_id, {"type": "chat.message", "message_id": message.pk})
