"""Retention, purge and legal holds.

Rules:
- Each team keeps its conversations ``keep_days`` after their last message (unset: for ever), and
  deleted ones ``deleted_keep_days`` after the deletion (default 30, for a team without a policy
  too).
- A purge erases what the policy says: every message's text, name, error and token ids, the
  conversation's title, system prompt and the API request's ``user`` field, and the text of its
  flag. The rows stay (marked ``purged_at``, and deleted, so they leave the chat) with their token
  counts and timings, so usage stays countable. The audit records each team's purge: how many
  conversations and messages, and the policy that decided.
- Nothing under a legal hold is purged: a conversation held alone, or every conversation of a held
  team. Holds are placed and released by reviewers of the team (or superusers); both are audited.
- A purge works in batches, each its own transaction: bounded memory and no giant transaction. A
  purge cut short is finished by the next one (a conversation is marked purged last).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Exists, F, Max, OuterRef, Q, QuerySet
from django.db.models.functions import Coalesce
from django.utils import timezone

from conversations.models import Conversation, Message, Team
from review import access
from review.models import AuditEntry, DailyJob, Flag, LegalHold, RetentionPolicy

log = logging.getLogger(__name__)

DEFAULT_DELETED_KEEP_DAYS = 30
BATCH_SIZE = 1000  # messages per transaction
CONVERSATIONS_PER_CHUNK = 200


# --- Policies ------------------------------------------------------------------------------------


def policy_for(team: Team) -> RetentionPolicy:
    """The team's policy; an unsaved default (keep for ever, deleted ones 30 days) when none was set."""
    return RetentionPolicy.objects.filter(team=team).first() or RetentionPolicy(
        team=team, keep_days=None, deleted_keep_days=DEFAULT_DELETED_KEEP_DAYS
    )


def set_retention(
    team: Team, *, keep_days: int | None, deleted_keep_days: int, by: AbstractBaseUser | None
) -> RetentionPolicy:
    with transaction.atomic():
        before = policy_for(team)
        was = (before.keep_days, before.deleted_keep_days)
        policy, _ = RetentionPolicy.objects.update_or_create(
            team=team, defaults={"keep_days": keep_days, "deleted_keep_days": deleted_keep_days}
        )
        if was != (keep_days, deleted_keep_days):
            _audit(
                by,
                AuditEntry.Action.RETENTION,
                team=team,
                object_repr=f"retention policy of {team}",
                detail=(
                    f"keep_days: {was[0]} -> {keep_days}; deleted_keep_days: {was[1]} -> {deleted_keep_days}"
                ),
            )
    return policy


def _audit(by: AbstractBaseUser | None, action: str, **kwargs) -> AuditEntry:
    from review.services import audit

    return audit(by, action, **kwargs)


# --- Legal holds ---------------------------------------------------------------------------------


def may_hold(
    user: AbstractBaseUser, *, team: Team | None = None, conversation: Conversation | None = None
) -> bool:
    """Reviewers hold what they review: a team they administer, a conversation they may review."""
    if access.is_superuser(user):
        return True
    if conversation is not None:
        return access.reviewable_conversations(user).filter(pk=conversation.pk).exists()
    return team is not None and access.can_review(user) and team.pk in access.admin_team_ids(user)


def place_hold(
    by: AbstractBaseUser,
    *,
    team: Team | None = None,
    conversation: Conversation | None = None,
    reason: str = "",
) -> LegalHold:
    if (team is None) == (conversation is None):
        raise ValueError("a hold is on one team or one conversation")
    if not may_hold(by, team=team, conversation=conversation):
        raise PermissionError("You may not place this hold.")
    with transaction.atomic():
        hold = LegalHold.objects.create(team=team, conversation=conversation, placed_by=by, reason=reason)
        _audit(
            by,
            AuditEntry.Action.HOLD,
            team=team,
            conversation=conversation,
            object_repr=str(hold),
            detail=reason,
            filters={"hold": hold.pk},
        )
    return hold


def may_release(user: AbstractBaseUser, hold: LegalHold) -> bool:
    """The reviewer who placed a hold, or a superuser, releases it."""
    return access.is_superuser(user) or (access.can_review(user) and hold.placed_by_id == user.pk)


def release_hold(hold: LegalHold, *, by: AbstractBaseUser, reason: str = "") -> None:
    if not may_release(by, hold):
        raise PermissionError("Only the reviewer who placed this hold, or a superuser, releases it.")
    with transaction.atomic():
        _audit(
            by,
            AuditEntry.Action.RELEASE,
            team=hold.team,
            conversation=hold.conversation,
            object_repr=str(hold),
            detail=reason,
            filters={"hold": hold.pk},
        )
        hold.delete()


def held() -> Q:
    """Conversations under a hold (their own, or their team's)."""
    return Q(Exists(LegalHold.objects.filter(conversation=OuterRef("pk")))) | Q(
        Exists(LegalHold.objects.filter(team=OuterRef("team_id")))
    )


# --- Purge ---------------------------------------------------------------------------------------


@dataclass
class TeamPurge:
    team: str
    policy: dict[str, int | None]
    expired: int = 0  # conversations past keep_days after their last message
    deleted: int = 0  # deleted conversations past deleted_keep_days
    held: int = 0  # conversations the policy would purge, kept by a hold
    messages: int = 0

    @property
    def conversations(self) -> int:
        return self.expired + self.deleted


@dataclass
class PurgeReport:
    now: datetime
    dry_run: bool
    teams: list[TeamPurge] = field(default_factory=list)
    batches: int = 0

    @property
    def conversations(self) -> int:
        return sum(t.conversations for t in self.teams)

    @property
    def messages(self) -> int:
        return sum(t.messages for t in self.teams)


def due(team: Team, policy: RetentionPolicy, now: datetime) -> QuerySet[Conversation]:
    """The team's conversations the policy says to purge at ``now`` (holds not applied)."""
    base = Conversation.objects.filter(team=team, purged_at__isnull=True)
    gone = Q(deleted_at__lte=now - timedelta(days=policy.deleted_keep_days))
    if policy.keep_days is None:
        return base.filter(gone)
    old = base.alias(last_message=Coalesce(Max("messages__created"), F("created"))).filter(
        last_message__lte=now - timedelta(days=policy.keep_days)
    )
    return base.filter(gone | Q(pk__in=old.values("pk")))


def purge(
    now: datetime | None = None,
    *,
    dry_run: bool = False,
    batch_size: int = BATCH_SIZE,
    on_batch: Callable[[int], None] | None = None,
) -> PurgeReport:
    """Erase what every team's policy says (see the module's rules). ``on_batch(n)``: called after
    each committed batch of ``n`` messages (tests check the batching)."""
    now = now or timezone.now()
    report = PurgeReport(now=now, dry_run=dry_run)
    for team in Team.objects.order_by("pk"):
        policy = policy_for(team)
        result = TeamPurge(
            team=team.name,
            policy={"keep_days": policy.keep_days, "deleted_keep_days": policy.deleted_keep_days},
        )
        candidates = due(team, policy, now)
        result.held = candidates.filter(held()).count()
        todo = candidates.exclude(held())
        deleted_cutoff = now - timedelta(days=policy.deleted_keep_days)
        if dry_run:
            result.deleted = todo.filter(deleted_at__lte=deleted_cutoff).count()
            result.expired = todo.count() - result.deleted
            result.messages = Message.objects.filter(conversation__in=todo).count()
        else:
            last_id = 0
            while True:
                chunk = list(
                    todo.filter(pk__gt=last_id)
                    .order_by("pk")
                    .values_list("pk", "deleted_at")[:CONVERSATIONS_PER_CHUNK]
                )
                if not chunk:
                    break
                last_id = chunk[-1][0]
                ids = [pk for pk, _ in chunk]
                result.messages += _erase_messages(ids, batch_size, report, on_batch)
                erased = _mark_purged(ids, now)
                gone = {
                    pk for pk, deleted_at in chunk if deleted_at is not None and deleted_at <= deleted_cutoff
                }
                result.deleted += len(gone & erased)
                result.expired += len(erased - gone)
            if result.conversations:
                _audit(
                    None,
                    AuditEntry.Action.PURGE,
                    team=team,
                    actor_name="retention policy (manage.py purge)",
                    object_repr=(
                        f"{result.conversations} conversation(s), {result.messages} message(s) of {team}"
                    ),
                    filters={"policy": result.policy, "now": now.isoformat()},
                    detail=(
                        f"policy keep_days={policy.keep_days}, deleted_keep_days={policy.deleted_keep_days}: "
                        f"{result.expired} past their last message, {result.deleted} deleted; "
                        f"{result.held} kept by a legal hold"
                    ),
                )
        if result.conversations or result.held:
            report.teams.append(result)
    if not dry_run:
        _forget_old_counters(now)
    return report


def _erase_messages(
    conversation_ids: list[int], batch_size: int, report: PurgeReport, on_batch: Callable[[int], None] | None
) -> int:
    """Blank the messages of ``conversation_ids``, ``batch_size`` at a time, one transaction each,
    re-checking the holds in each (a hold placed meanwhile wins)."""
    erased, last_id = 0, 0
    while True:
        with transaction.atomic():
            batch = list(
                Message.objects.filter(conversation_id__in=conversation_ids, pk__gt=last_id)
                .exclude(Q(conversation__in=Conversation.objects.filter(held())))
                .order_by("pk")
                .values_list("pk", flat=True)[:batch_size]
            )
            if not batch:
                return erased
            Message.objects.filter(pk__in=batch).update(content="", name="", error="", token_ids=None)
        last_id = batch[-1]
        erased += len(batch)
        report.batches += 1
        if on_batch is not None:
            on_batch(len(batch))


def _mark_purged(conversation_ids: list[int], now: datetime) -> set[int]:
    with transaction.atomic():
        ids = set(
            Conversation.objects.filter(pk__in=conversation_ids, purged_at__isnull=True)
            .exclude(held())
            .values_list("pk", flat=True)
        )
        Flag.objects.filter(conversation_id__in=ids).update(note="")
        Conversation.objects.filter(pk__in=ids).update(
            title="",
            system_prompt="",
            request_user="",
            purged_at=now,
            deleted_at=Coalesce(F("deleted_at"), now),
        )
    return ids


def _forget_old_counters(now: datetime) -> None:
    from review.limit_counters import counters

    try:
        counters().forget_before(int((now - timedelta(days=2)).timestamp()))
    except Exception:
        log.exception("could not delete old limit counters")


# --- Once a day, in the background (manage.py serve and inferenceworker) -------------------------

DAILY = "purge"


def run_if_due(now: datetime | None = None, *, every: timedelta = timedelta(hours=23)) -> PurgeReport | None:
    """Purge unless a purge started less than ``every`` ago (in any process): several processes run
    the daily loop, and the first to take the row does the day's purge."""
    now = now or timezone.now()
    with transaction.atomic():
        DailyJob.objects.get_or_create(name=DAILY, defaults={"last_run": now - every - timedelta(seconds=1)})
        job = DailyJob.objects.select_for_update().get(name=DAILY)
        if job.last_run > now - every:
            return None
        job.last_run = now
        job.save(update_fields=["last_run"])
    return purge(now)


class DailyPurge:
    """A daemon thread that runs ``run_if_due`` after ``first_delay`` seconds, then every hour."""

    def __init__(self, first_delay: float, interval: float = 3600.0) -> None:
        self.first_delay, self.interval = first_delay, interval
        self.stopped = threading.Event()
        self.ran = threading.Event()  # set after each check (tests wait on it)
        self.thread = threading.Thread(target=self._loop, name="daily-purge", daemon=True)

    def start(self) -> DailyPurge:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()

    def _loop(self) -> None:
        from django.db import close_old_connections

        wait = self.first_delay
        while not self.stopped.wait(wait):
            try:
                report = run_if_due()
                if report is not None:
                    log.info(
                        "daily purge: %d conversation(s), %d message(s)",
                        report.conversations,
                        report.messages,
                    )
            except Exception:
                log.exception("the daily purge failed")
            finally:
                close_old_connections()
            self.ran.set()
            wait = self.interval


def start_daily_purge() -> DailyPurge | None:
    """For ``serve`` and ``inferenceworker``: unless CHAT_PURGE_DAILY=0 (purge from cron instead)."""
    if not settings.CHAT_PURGE_DAILY:
        return None
    return DailyPurge(settings.CHAT_PURGE_FIRST_DELAY).start()
