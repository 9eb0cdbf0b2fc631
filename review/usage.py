"""Token usage per day, team, user and API key, from the logged assistant messages; and its chart.

Prompt tokens are counted once per request: the n replies of one API call each record the same
prompt, so only choice 0's counts. Completion tokens are summed over every reply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Case, CharField, Count, F, Q, Sum, When
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, Coalesce, TruncDate

from conversations.models import Conversation, Message
from review import access

MAX_DAYS = 366


@dataclass(frozen=True)
class UsageRow:
    day: date
    team: str
    user: str
    api_key: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    model: str = ""  # the reply's model: an API call's own, a browser reply's logged one

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class ModelTotal:
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int


def model_totals(rows: list[UsageRow]) -> list[ModelTotal]:
    """The period's usage per model, busiest first."""
    sums: dict[str, list[int]] = {}
    for r in rows:
        total = sums.setdefault(r.model, [0, 0, 0])
        total[0] += r.requests
        total[1] += r.prompt_tokens
        total[2] += r.completion_tokens
    out = [ModelTotal(m, *t) for m, t in sums.items()]
    return sorted(out, key=lambda t: (-(t.prompt_tokens + t.completion_tokens), t.model))


# An API call's model is its conversation's (the id it resolved to; the params keep the one asked
# for, maybe an alias); a browser reply's is the one its params logged (the chat may change model).
REPLY_MODEL = Case(
    When(conversation__source=Conversation.Source.API, then=F("conversation__model_id")),
    default=Coalesce(Cast(KT("params__model"), CharField()), F("conversation__model_id")),
    output_field=CharField(),
)


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def usage_scope(user: AbstractBaseUser | AnonymousUser) -> Any:
    """The conversations whose token counts ``user`` may see: every conversation of the teams they
    review, private ones included (counts carry no content)."""
    if access.is_superuser(user):
        return Conversation.objects.all()
    return (
        Conversation.objects.filter(team_id__in=access.admin_team_ids(user))
        if access.can_review(user)
        else None
    )


def usage_rows(
    user: AbstractBaseUser | AnonymousUser, start: date, end: date, team_id: int | None = None
) -> list[UsageRow]:
    scope = usage_scope(user)
    if scope is None:
        return []
    if team_id is not None:
        scope = scope.filter(team_id=team_id)
    replies = Message.objects.filter(
        role=Message.Role.ASSISTANT,
        conversation__in=scope,
        created__gte=_midnight(start),
        created__lt=_midnight(end + timedelta(days=1)),
    )
    grouped = (
        replies.annotate(day=TruncDate("created"), reply_model=REPLY_MODEL)
        .values(
            "day",
            "conversation__team__name",
            "conversation__owner__username",
            "conversation__api_key__prefix",
            "reply_model",
        )
        .annotate(
            requests=Count("pk", filter=Q(choice_index=0)),
            prompt=Sum("prompt_tokens", filter=Q(choice_index=0)),
            completion=Sum("completion_tokens"),
        )
        .order_by(
            "day",
            "conversation__team__name",
            "conversation__owner__username",
            "conversation__api_key__prefix",
            "reply_model",
        )
    )
    return [
        UsageRow(
            day=row["day"],
            team=row["conversation__team__name"],
            user=row["conversation__owner__username"],
            api_key=row["conversation__api_key__prefix"] or "",
            requests=row["requests"] or 0,
            prompt_tokens=row["prompt"] or 0,
            completion_tokens=row["completion"] or 0,
            model=row["reply_model"] or "",
        )
        for row in grouped
    ]


# --- The chart: a server-rendered SVG (no script, no CDN) -----------------------------------------

WIDTH, HEIGHT = 760, 260
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 16, 36
PROMPT_COLOUR, COMPLETION_COLOUR = "#79aec8", "#417690"


@dataclass
class Chart:
    width: int = WIDTH
    height: int = HEIGHT
    bars: list[dict[str, Any]] = field(default_factory=list)
    ticks: list[dict[str, Any]] = field(default_factory=list)
    labels: list[dict[str, Any]] = field(default_factory=list)
    axis: dict[str, int] = field(default_factory=dict)
    legend: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0


def _nice_ceiling(value: int) -> int:
    if value <= 0:
        return 10
    magnitude = 10 ** (len(str(value)) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude and (step * magnitude) % 5 == 0:
            return int(step * magnitude)
    return 10 * magnitude


def chart(rows: list[UsageRow], start: date, end: date) -> Chart:
    """One stacked bar a day (prompt below, completion above), a y axis with 5 ticks, date labels."""
    days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    prompt = dict.fromkeys(days, 0)
    completion = dict.fromkeys(days, 0)
    for row in rows:
        prompt[row.day] = prompt.get(row.day, 0) + row.prompt_tokens
        completion[row.day] = completion.get(row.day, 0) + row.completion_tokens
    top = _nice_ceiling(max((prompt[d] + completion[d] for d in days), default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / len(days)
    bar_w = max(1.0, slot * 0.7)
    out = Chart(axis={"x0": LEFT, "x1": WIDTH - RIGHT, "y0": TOP, "y1": TOP + plot_h})

    def y(value: int) -> float:
        return TOP + plot_h - plot_h * value / top

    for i, day in enumerate(days):
        x = LEFT + i * slot + (slot - bar_w) / 2
        p, c = prompt[day], completion[day]
        out.bars.append(
            {
                "day": day,
                "x": round(x, 1),
                "w": round(bar_w, 1),
                "prompt_y": round(y(p), 1),
                "prompt_h": round(TOP + plot_h - y(p), 1),
                "completion_y": round(y(p + c), 1),
                "completion_h": round(y(p) - y(p + c), 1),
                "title": f"{day.isoformat()}: {p} prompt + {c} completion tokens",
            }
        )
    for k in range(6):
        value = top * k // 5
        out.ticks.append({"y": round(y(value), 1), "label": f"{value:,}"})
    every = max(1, len(days) // 8)
    for i in range(0, len(days), every):
        out.labels.append({"x": round(LEFT + i * slot + slot / 2, 1), "label": days[i].strftime("%b %d")})
    out.legend = [
        {"colour": PROMPT_COLOUR, "label": "prompt tokens"},
        {"colour": COMPLETION_COLOUR, "label": "completion tokens"},
    ]
    out.total = sum(prompt.values()) + sum(completion.values())
    return out
