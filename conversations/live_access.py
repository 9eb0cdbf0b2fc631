"""Access follows membership live: open chat sockets re-check their access when it can change.

Each chat socket joins its user's group (``user-<id>``) beside its conversation's. Whatever can take
access away sends ``{"type": "access.changed"}`` there once its transaction commits, and the
socket checks again with the database (``check``); a socket that lost access is closed (4403)
before it forwards anything else: events reach a consumer one at a time, in the order they were
sent, so a message or delta sent after the change comes after the check.

The changes are caught where they happen to the rows, by signals, so that every path counts (the
review services, the admin and its bulk actions, a queryset delete, a cascade, the shell):

- a Membership saved (a role change) or deleted → its user's group;
- a user saved (password changed, deactivated; not the ``last_login`` write of a login) or deleted
  → their group;
- a logout → their group, naming the ended session (the session is flushed *after* Django's
  ``user_logged_out`` signal, so the database would still show it);
- a conversation deleted for good → its conversation's group. (Made private or soft-deleted:
  ``actions`` broadcasts ``chat.conversation``, on which the socket checks again too; not for
  a new title, which carries the title and changes no one's access.)

A ``QuerySet.update()`` on users or memberships sends no signal: such a change reaches open sockets
at their next action, when access is checked again anyway.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth import SESSION_KEY, get_user_model, user_logged_out
from django.contrib.auth.models import AbstractBaseUser
from django.contrib.sessions.models import Session
from django.db import connections, router
from django.db.models import BooleanField, OuterRef, QuerySet, Subquery
from django.db.models.expressions import RawSQL
from django.db.models.signals import post_delete, post_save
from django.http import HttpRequest
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from conversations import actions, queries
from conversations.models import Conversation, Membership

EVENT = "access.changed"
DATABASE_SESSIONS = "django.contrib.sessions.backends.db"


def user_group_name(user_id: int) -> str:
    return f"user-{user_id}"


def session_digest(session_key: str | None) -> str:
    """What the layer carries to name a session (never the key itself)."""
    return hashlib.sha256(session_key.encode()).hexdigest() if session_key else ""


def _send_on_commit(group: str, event: dict[str, Any]) -> None:
    # With Redis down the change is committed all the same (and no socket can receive anything
    # then: the consumers close with 4503).
    actions.send_on_commit(group, {"type": EVENT, **event})


def user_changed(user_id: int, *, ended_session: str | None = None) -> None:
    """Every socket of the user checks its access again (after the commit)."""
    event = {"ended_session": session_digest(ended_session)} if ended_session else {}
    _send_on_commit(user_group_name(user_id), event)


def conversation_changed(conversation_id: int) -> None:
    """Every socket on the conversation checks its access again (after the commit)."""
    _send_on_commit(actions.group_name(conversation_id), {})


# --- What a socket knows of how it was let in, and the check -------------------------------------


@dataclass(frozen=True)
class Credentials:
    user_id: int
    session_key: str | None
    session: str  # session_digest(session_key)
    auth_hash: str  # the user's session auth hash (derived from the password) at connect time

    @classmethod
    def of(cls, scope: dict[str, Any], user: AbstractBaseUser) -> Credentials:
        session = scope.get("session")
        key = getattr(session, "session_key", None) if session is not None else None
        return cls(user.pk, key, session_digest(key), user.get_session_auth_hash())


def ends_this_session(event: dict[str, Any], credentials: Credentials) -> bool:
    ended = event.get("ended_session", "")
    return bool(ended) and constant_time_compare(ended, credentials.session)


def check(credentials: Credentials, conversation_id: int) -> Conversation | None:
    """The conversation as now stored, if the socket may still show it; else None. The conversation
    carries ``team_models``: the models its team may use (None: all), read in the same query.

    The user must still exist and be active, their password unchanged since the socket opened, the
    socket's session still logged in as them, and the conversation visible to them. One query when
    sessions are in the database (the default): the user's password hash, the session's data,
    the team's models and whether any usage limit applies (``limits_apply``) come with the
    conversation, as subqueries. It runs before every reply's
    start, on the way to its first token: the query is the ORM's (``_query``), compiled once
    (``_Statement``)."""
    user_id, key = credentials.user_id, credentials.session_key
    in_database = settings.SESSION_ENGINE == DATABASE_SESSIONS
    with_session = key is not None and in_database
    conversation = _statement(with_session).run(user=user_id, conversation=conversation_id, key=key)
    if conversation is None or conversation._password is None:  # (None: no such active user)
        return None
    stored = get_user_model()(pk=user_id, password=conversation._password)  # what the hash is made of
    if not constant_time_compare(stored.get_session_auth_hash(), credentials.auth_hash):
        return None
    if key is not None:
        store = import_module(settings.SESSION_ENGINE).SessionStore
        if in_database:
            data = store().decode(conversation._session) if conversation._session is not None else {}
        else:
            data = store(key).load()
        if str(data.get(SESSION_KEY, "")) != str(user_id):
            return None  # logged out, expired, or now another user's
    models = actions.from_db(actions.team_models_model(), "models", conversation._models)
    conversation.team_models = None if models is None else list(models)
    conversation.limits_apply = bool(conversation._limited)  # (conversations/chat_limits.py)
    return conversation


def _query(user_id: int, conversation_id: int, key: str | None, now: datetime) -> QuerySet[Conversation]:
    """The check's one query: the conversation if ``user_id`` may see it (``queries``' own rule),
    with the user's password hash if they are active, the data of session ``key`` if it has not
    expired (with ``key``), and the team's models."""
    User = get_user_model()
    user = User.objects.filter(pk=user_id, is_active=True)
    found = queries.visible_conversations_of(user_id).filter(pk=conversation_id)
    team_models = actions.team_models_model().objects.filter(team_id=OuterRef("team_id"))
    found = found.annotate(
        _password=Subquery(user.values("password")[:1]),
        _models=Subquery(team_models.values("models")[:1]),
    )
    if key is not None:
        session = Session.objects.filter(session_key=key, expire_date__gt=now)
        found = found.annotate(_session=Subquery(session.values("session_data")[:1]))
    return found.annotate(_limited=_limits_apply(user_id))


def _limits_apply(user_id: int) -> RawSQL:
    """Whether any usage limit applies to a reply of ``user_id`` in the conversation's team: when
    none does, the reply's reservation reads no limits (conversations/chat_limits.py)."""
    qn = connections[router.db_for_read(Conversation)].ops.quote_name
    team = f"{qn(Conversation._meta.db_table)}.{qn('team_id')}"
    exists = actions.any_limit_applies_sql(team, "%s", "NULL", qn)  # the user's id twice
    return RawSQL(exists, (user_id, user_id), BooleanField())


# Two sets of stand-ins for the values of one check, unlike any real one (negative ids, within the
# integer columns' range: the ORM compiles a lookup of an out-of-range integer to no row at all).
# The compiled query's parameters that equal them are where each check's own values go.
_STAND_INS = [
    {
        "user": -1_999_999_901,
        "conversation": -1_999_999_902,
        "key": "stand-in-session-key-of-the-access-check-1",
        "now": datetime(2001, 2, 3, 4, 5, 6, 789012, tzinfo=UTC),
    },
    {
        "user": -1_999_999_903,
        "conversation": -1_999_999_904,
        "key": "stand-in-session-key-of-the-access-check-2",
        "now": datetime(2002, 3, 4, 5, 6, 7, 890123, tzinfo=UTC),
    },
]


@dataclass(frozen=True)
class _Statement:
    """``_query`` compiled once by the ORM (building a query costs more than the database's answer
    to it: ~1.3 of ~1.9 ms): its SQL, its parameters, and which of them take a check's values."""

    sql: str
    params: tuple[Any, ...]
    slots: tuple[tuple[int, str], ...]  # (parameter index, "user" | "conversation" | "key" | "now")
    alias: str

    @classmethod
    def compile(cls, with_session: bool) -> _Statement:
        """Compiled with each set of stand-ins: the two must give the same SQL, with the stand-ins
        in the same places and every other parameter the same, or the query depends on the values
        in some other way and is not reused (RuntimeError)."""
        alias = router.db_for_read(Conversation)
        compiled = []
        for stand_ins in _STAND_INS:
            key = stand_ins["key"] if with_session else None
            query = _query(stand_ins["user"], stand_ins["conversation"], key, stand_ins["now"])
            sql, params = query.query.get_compiler(using=alias).as_sql()
            values = {**stand_ins, "now": _database_time(stand_ins["now"], alias)}
            slots = tuple(
                (i, name)
                for i, param in enumerate(params)
                for name, value in values.items()
                if type(param) is type(value) and param == value
            )
            rest = [param for i, param in enumerate(params) if i not in dict(slots)]
            inlined = any(str(value) in sql for value in values.values())
            compiled.append((sql, slots, rest, inlined, params))
        (sql, slots, rest, inlined, params), other = compiled
        expected = {"user", "conversation"} | ({"key", "now"} if with_session else set())
        if inlined or other[:3] != (sql, slots, rest) or {name for _, name in slots} != expected:
            raise RuntimeError(f"the access check's query cannot be compiled once: {sql!r} {params!r}")
        return cls(sql, tuple(params), slots, alias)

    def run(self, **values: Any) -> Conversation | None:
        params = list(self.params)
        values["now"] = _database_time(timezone.now(), self.alias)
        for i, name in self.slots:
            params[i] = values[name]
        return next(iter(Conversation.objects.raw(self.sql, params).using(self.alias)), None)


def _database_time(value: datetime, alias: str) -> Any:
    """A session's expiry time as the ORM passes it to the database (the backend's own form)."""
    field = Session._meta.get_field("expire_date")
    return field.get_db_prep_value(value, connections[alias], prepared=False)


_statements: dict[tuple[str, bool], _Statement] = {}


def _statement(with_session: bool) -> _Statement:
    """The compiled check, with or without a session: once per database and shape."""
    name = (router.db_for_read(Conversation), with_session)
    statement = _statements.get(name)
    if statement is None:
        statement = _statements[name] = _Statement.compile(with_session)
    return statement


# --- The signals ---------------------------------------------------------------------------------


def _membership_changed(sender: type, instance: Membership, **kwargs: Any) -> None:
    user_changed(instance.user_id)


def _user_saved(sender: type, instance: AbstractBaseUser, update_fields: Any = None, **kwargs: Any) -> None:
    if kwargs.get("created") or (update_fields is not None and set(update_fields) == {"last_login"}):
        return  # a new user has no socket; a login changes no one's access
    user_changed(instance.pk)


def _user_deleted(sender: type, instance: AbstractBaseUser, **kwargs: Any) -> None:
    user_changed(instance.pk)


def _logged_out(sender: type, request: HttpRequest, user: AbstractBaseUser | None, **kwargs: Any) -> None:
    if user is not None and user.pk is not None:
        user_changed(user.pk, ended_session=getattr(request.session, "session_key", None))


def _conversation_deleted(sender: type, instance: Conversation, **kwargs: Any) -> None:
    conversation_changed(instance.pk)


def connect_signals() -> None:
    """Called once, from ``ConversationsConfig.ready``."""
    User = get_user_model()
    post_save.connect(_membership_changed, sender=Membership, dispatch_uid="live_access.membership_saved")
    post_delete.connect(_membership_changed, sender=Membership, dispatch_uid="live_access.membership_deleted")
    post_save.connect(_user_saved, sender=User, dispatch_uid="live_access.user_saved")
    post_delete.connect(_user_deleted, sender=User, dispatch_uid="live_access.user_deleted")
    user_logged_out.connect(_logged_out, dispatch_uid="live_access.logged_out")
    post_delete.connect(
        _conversation_deleted, sender=Conversation, dispatch_uid="live_access.conversation_deleted"
    )
