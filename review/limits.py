"""Quotas and rate limits: requests per minute and tokens per day, per team, user, member and key.

Rules:
- A limit row (``review.models.Limit``) sets either or both numbers for one scope: a team, a user
  (everywhere), a user within one team (a member), or an API key. A /v1 call is counted against its
  key's team, user, member and key; a browser message against the conversation's team and the
  sender (user and member). Every limit that applies must have room: the strictest decides.
- Requests per minute count admitted requests in each UTC minute (an API call with n > 1 is one
  request). Tokens per day count prompt + completion tokens in each UTC day.
- Admission, before any work or write, reserves one request and ``prompt + max_tokens`` tokens
  (× n for n choices) in every counter at once, or nothing (``limit_counters``). When the reply
  ends, the reservation is settled with the real usage (the unused part given back); a call that
  is refused later (the queue is full) or fails before it starts gives everything back.
- Counters are kept only for scopes that have a limit. A limit set on a scope that had none
  starts from the usage already logged in the current window, so setting one mid-day counts the
  morning too.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction
from django.db.models import Q, Sum

from conversations import actions
from conversations.models import ApiKey, Message, Team
from review.limit_counters import Item, Refused, counters
from review.models import AuditEntry, Limit

log = logging.getLogger(__name__)

MINUTE, DAY = 60, 86_400
REQUESTS, TOKENS = "requests", "tokens"


@dataclass(frozen=True)
class Rule:
    """One limit of one scope, in its current window."""

    kind: str  # REQUESTS or TOKENS
    scope: str  # "team-3", "user-5", "member-3-5", "key-9"
    label: str  # "team alpha"
    limit: int
    window: int
    period: int

    @property
    def counter(self) -> str:
        return f"{'req' if self.kind == REQUESTS else 'tok'}:{self.scope}"

    @property
    def resets_at(self) -> int:
        return self.window + self.period

    def item(self, amount: int) -> Item:
        # Redis keeps a counter a little past its window (a late settlement still finds it).
        return Item(self.counter, self.window, amount, self.limit, self.period + 3600)


class LimitsUnavailable(Exception):
    """The counters cannot be reached (Redis or the database is down): the request is refused,
    since a limit that cannot be checked cannot be kept."""


class LimitReached(Exception):
    """A request the limits refuse: which limit, and when it resets."""

    def __init__(self, rule: Rule, used: int, requested: int, now: float, headers: dict[str, str]) -> None:
        self.rule, self.used, self.requested, self.headers = rule, used, requested, headers
        self.retry_after = max(1, math.ceil(rule.resets_at - now))
        what = "requests per minute" if rule.kind == REQUESTS else "tokens per day"
        reset = datetime.fromtimestamp(rule.resets_at, UTC)
        self.reset_text = f"in {duration(rule.resets_at - now)} (at {reset:%H:%M:%S} UTC)"
        super().__init__(
            f"Rate limit reached for {rule.label} on {what}: limit {rule.limit}, used {used}, "
            f"requested {requested}. It resets {self.reset_text}."
        )


@dataclass
class Reservation:
    """What one admitted request took; ``settle`` or ``refund`` it once."""

    rules: list[Rule] = field(default_factory=list)
    tokens: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    done: bool = False

    def settle(self, used_tokens: int) -> None:
        """The request used ``used_tokens`` (prompt + completion): give back the rest."""
        self._finish(0, used_tokens - self.tokens)

    def refund(self) -> None:
        """Nothing was done after all: give back the request and its tokens."""
        self._finish(-1, -self.tokens)

    def _finish(self, requests: int, tokens: int) -> None:
        if self.done or not self.rules:
            self.done = True
            return
        self.done = True
        items = [r.item(requests if r.kind == REQUESTS else tokens) for r in self.rules]
        try:
            counters().add(items)
        except Exception:  # the counter errs on the strict side (a request's budget stays taken)
            log.exception("could not settle a reservation")


# --- Which limits apply --------------------------------------------------------------------------


@dataclass(frozen=True)
class LimitRow:
    """A ``Limit`` as the admission reads it (one raw query, no model instances: it runs for every
    request)."""

    team_id: int | None
    user_id: int | None
    api_key_id: int | None
    requests_per_minute: int | None
    tokens_per_day: int | None
    scope_label: str


def limits_for(team_id: int | None, user_id: int | None, key_id: int | None = None) -> list[LimitRow]:
    """The limits for a request of ``user_id`` in ``team_id`` (with ``key_id``): one query."""
    if team_id is None and user_id is None and key_id is None:
        return []
    where = actions.limit_applies_sql("%s", "%s", "%s")  # placeholders: team, user, team, user, key
    params = [team_id, user_id, team_id, user_id, key_id]
    User = get_user_model()
    users, name = User._meta.db_table, User._meta.get_field(User.USERNAME_FIELD).column
    sql = (
        "SELECT l.team_id, l.user_id, l.api_key_id, l.requests_per_minute, l.tokens_per_day, "
        f"t.name, u.{name}, k.prefix FROM {Limit._meta.db_table} l "
        f"LEFT JOIN {Team._meta.db_table} t ON t.id = l.team_id "
        f"LEFT JOIN {users} u ON u.id = l.user_id "
        f"LEFT JOIN {ApiKey._meta.db_table} k ON k.id = l.api_key_id "
        f"WHERE {where}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return [
        LimitRow(team, user, key, rpm, tpd, _label(team_name, username, prefix))
        for team, user, key, rpm, tpd, team_name, username, prefix in rows
    ]


def _label(team: str | None, user: str | None, prefix: str | None) -> str:
    if prefix is not None:
        return f"API key {prefix}"
    if team is not None and user is not None:
        return f"{user} in {team}"
    return f"team {team}" if team is not None else f"user {user}"


def scope_of(limit: Limit | LimitRow) -> str:
    if limit.api_key_id is not None:
        return f"key-{limit.api_key_id}"
    if limit.team_id is not None and limit.user_id is not None:
        return f"member-{limit.team_id}-{limit.user_id}"
    if limit.team_id is not None:
        return f"team-{limit.team_id}"
    return f"user-{limit.user_id}"


def windows(now: float) -> tuple[int, int]:
    """The start of the current minute and of the current UTC day."""
    return int(now // MINUTE * MINUTE), int(now // DAY * DAY)


def rules_for(limits: list[Limit] | list[LimitRow], now: float) -> list[Rule]:
    minute, day = windows(now)
    out = []
    for limit in limits:
        scope, label = scope_of(limit), limit.scope_label
        if limit.requests_per_minute is not None:
            out.append(Rule(REQUESTS, scope, label, limit.requests_per_minute, minute, MINUTE))
        if limit.tokens_per_day is not None:
            out.append(Rule(TOKENS, scope, label, limit.tokens_per_day, day, DAY))
    return out


# --- Admission -----------------------------------------------------------------------------------


def reserve(
    *,
    team_id: int | None,
    user_id: int | None,
    key_id: int | None = None,
    tokens: int,
    now: float | None = None,
    applying: list[LimitRow] | None = None,
) -> Reservation:
    """Take one request and ``tokens`` tokens from every limit that applies, or raise
    ``LimitReached`` (the strictest limit without room) having taken nothing. ``applying``: the
    ``limits_for`` rows, when the caller has them already."""
    now = time.time() if now is None else now
    found = limits_for(team_id, user_id, key_id) if applying is None else applying
    rules = rules_for(found, now)
    if not rules:
        return Reservation()
    amounts = [1 if r.kind == REQUESTS else tokens for r in rules]
    try:
        used = counters().take([r.item(a) for r, a in zip(rules, amounts, strict=True)])
    except Refused as refused:
        current = read_used(rules)  # for the headers (a refusal is rare: one more read)
        current[refused.index] = refused.used
        headers = rate_headers(rules, current, now)
        raise LimitReached(rules[refused.index], refused.used, amounts[refused.index], now, headers) from None
    except Exception as exc:
        log.exception("the limits' counters cannot be reached")
        raise LimitsUnavailable(str(exc)) from exc
    return Reservation(rules, tokens, rate_headers(rules, used, now))


def read_used(rules: list[Rule]) -> list[int]:
    return counters().read([r.item(0) for r in rules])


def rate_headers(rules: list[Rule], used: list[int], now: float) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers, for each kind from the limit with the least room left."""
    headers: dict[str, str] = {}
    for kind in (REQUESTS, TOKENS):
        pairs = [(r, u) for r, u in zip(rules, used, strict=True) if r.kind == kind]
        if not pairs:
            continue
        rule, u = min(pairs, key=lambda p: (p[0].limit - p[1], p[0].limit))
        headers[f"x-ratelimit-limit-{kind}"] = str(rule.limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, rule.limit - u))
        headers[f"x-ratelimit-reset-{kind}"] = duration(rule.resets_at - now)
    return headers


def duration(seconds: float) -> str:
    """OpenAI's format for the reset headers: ``20ms``, ``1s``, ``6m0s``, ``1h2m3s``."""
    if seconds < 1:
        return f"{max(0, int(seconds * 1000))}ms"
    total = math.ceil(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


# --- Settling when a reply ends ------------------------------------------------------------------

_settling: set[asyncio.Task] = set()


def settle_after(run: Any, reservation: Reservation) -> None:
    """Settle ``reservation`` with the real usage once ``run`` (a ``runner.Run``) has ended."""
    if not reservation.rules:
        return

    async def settle() -> None:
        try:
            finished = await run.wait()
            prompt = max((f.usage.prompt_tokens for f in finished), default=0)
            used = prompt + sum(f.usage.completion_tokens for f in finished)
        except Exception:
            log.exception("a limited reply ended in error; its reservation stays taken")
            return
        await database_sync_to_async(reservation.settle, thread_sensitive=False)(used)

    task = asyncio.get_running_loop().create_task(settle(), context=contextvars.Context())
    _settling.add(task)
    task.add_done_callback(_settling.discard)


async def wait_settled() -> None:
    """Wait for the settlements under way (tests, shutdown)."""
    if _settling:
        await asyncio.gather(*list(_settling), return_exceptions=True)


# --- Setting limits ------------------------------------------------------------------------------

UNCHANGED: Any = object()


def set_limits(
    *,
    team: Team | None = None,
    user: AbstractBaseUser | None = None,
    api_key: ApiKey | None = None,
    requests_per_minute: int | None = UNCHANGED,
    tokens_per_day: int | None = UNCHANGED,
    by: AbstractBaseUser | None,
    now: float | None = None,
) -> Limit | None:
    """Set (None: remove) a scope's limits; audited. Returns the row, or None when both are unset.

    A number set where there was none starts its counter from the usage logged in the current
    window (the same minute, the same UTC day)."""
    from review.services import audit

    if api_key is not None and (team is not None or user is not None):
        raise ValueError("an API key's limits have no team or user")
    if api_key is None and team is None and user is None:
        raise ValueError("name a team, a user or an API key")
    now = time.time() if now is None else now
    with transaction.atomic():
        limit = (
            Limit.objects.select_for_update(of=("self",))
            .filter(team=team, user=user, api_key=api_key)
            .select_related("team", "user", "api_key")
            .first()
        )
        before = (None, None) if limit is None else (limit.requests_per_minute, limit.tokens_per_day)
        rpm = before[0] if requests_per_minute is UNCHANGED else requests_per_minute
        tpd = before[1] if tokens_per_day is UNCHANGED else tokens_per_day
        if limit is None:
            limit = Limit(team=team, user=user, api_key=api_key)
        limit.requests_per_minute, limit.tokens_per_day = rpm, tpd
        if (rpm, tpd) == before:
            return limit if limit.pk else None
        if rpm is None and tpd is None:
            limit.delete()
        else:
            limit.save()
        scope_team = team or (api_key.team if api_key is not None else None)
        audit(
            by,
            AuditEntry.Action.LIMITS,
            team=scope_team,
            object_repr=limit.scope_label,
            filters={"scope": scope_of(limit)},
            detail=f"requests_per_minute: {before[0]} -> {rpm}; tokens_per_day: {before[1]} -> {tpd}",
        )
        seeds = []
        for rule in rules_for([limit], now):
            newly = before[0] is None if rule.kind == REQUESTS else before[1] is None
            if newly:
                seeds.append((rule, logged_usage(limit, rule, now)))
    for rule, used in seeds:
        counters().set(rule.item(used))
    return None if (rpm is None and tpd is None) else limit


def logged_usage(limit: Limit, rule: Rule, now: float) -> int:
    """What the log says this scope used in the rule's current window (requests or tokens)."""
    start = datetime.fromtimestamp(rule.window, UTC)
    replies = Message.objects.filter(role=Message.Role.ASSISTANT, created__gte=start)
    if limit.api_key_id is not None:
        replies = replies.filter(conversation__api_key_id=limit.api_key_id)
    if limit.team_id is not None:
        replies = replies.filter(conversation__team_id=limit.team_id)
    if limit.user_id is not None:
        replies = replies.filter(conversation__owner_id=limit.user_id)
    if rule.kind == REQUESTS:
        return replies.filter(choice_index=0).count()
    sums = replies.aggregate(
        prompt=Sum("prompt_tokens", filter=Q(choice_index=0)), completion=Sum("completion_tokens")
    )
    return (sums["prompt"] or 0) + (sums["completion"] or 0)


# --- The usage page: each limited scope's consumption against its limits -------------------------


@dataclass(frozen=True)
class LimitUsage:
    scope: str
    kind: str  # "requests per minute" or "tokens per day"
    limit: int
    used: int
    resets_in: str

    @property
    def reached(self) -> bool:
        return self.used >= self.limit


def usage_against_limits(rows: list[Limit], now: float | None = None) -> list[LimitUsage]:
    """For each limit of ``rows``, its counter in the current window (one read for all)."""
    now = time.time() if now is None else now
    rules = rules_for(rows, now)
    used = read_used(rules)
    return [
        LimitUsage(
            scope=rule.label,
            kind="requests per minute" if rule.kind == REQUESTS else "tokens per day",
            limit=rule.limit,
            used=u,
            resets_in=duration(rule.resets_at - now),
        )
        for rule, u in zip(rules, used, strict=True)
    ]
