"""Review pages outside the ModelAdmins: usage (page and CSV), and a team's policy for its members."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import date, timedelta
from functools import wraps
from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.core.validators import MaxValueValidator, MinValueValidator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone

from conversations import queries as conversation_queries
from conversations.models import Membership
from review import access, limits, services, usage
from review.admin.limits import managed_limits


def reviewer_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Anonymous: to the admin's login. Signed in but reviewing no team: 404, as for a missing page."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path(), reverse("admin:login"))
        if not access.can_review(request.user):
            raise Http404("No such page")
        return view(request, *args, **kwargs)

    return wrapper


# A year of margin at each end of Python's calendar: the period's arithmetic (two weeks back by
# default, a day on for the end's midnight) and time zones never step outside it.
FIRST_DAY, LAST_DAY = date(2, 1, 1), date(9998, 12, 31)
_IN_CALENDAR = [
    MinValueValidator(FIRST_DAY, f"Choose a date from {FIRST_DAY} to {LAST_DAY}."),
    MaxValueValidator(LAST_DAY, f"Choose a date from {FIRST_DAY} to {LAST_DAY}."),
]


class PeriodForm(forms.Form):
    start = forms.DateField(
        required=False, validators=_IN_CALENDAR, widget=forms.DateInput(attrs={"type": "date"})
    )
    end = forms.DateField(
        required=False, validators=_IN_CALENDAR, widget=forms.DateInput(attrs={"type": "date"})
    )
    team = forms.TypedChoiceField(required=False, coerce=int, empty_value=None)

    def __init__(self, *args: Any, user: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        teams = access.reviewable_teams(user).values_list("pk", "name")
        self.fields["team"].choices = [("", "All my teams"), *teams]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if self.errors:  # a date out of the calendar: the period cannot be computed
            return data
        today = timezone.now().date()
        end = data.get("end") or today
        start = data.get("start") or end - timedelta(days=13)
        if start > end:
            raise forms.ValidationError("The start comes after the end.")
        if (end - start).days >= usage.MAX_DAYS:
            raise forms.ValidationError(f"Choose at most {usage.MAX_DAYS} days.")
        data["start"], data["end"] = start, end
        return data


def _period(request: HttpRequest) -> tuple[PeriodForm, date, date, int | None]:
    form = PeriodForm(request.GET or None, user=request.user)
    if form.is_bound and form.is_valid():
        return form, form.cleaned_data["start"], form.cleaned_data["end"], form.cleaned_data["team"]
    end = timezone.now().date()
    return form, end - timedelta(days=13), end, None


@reviewer_required
def usage_page(request: HttpRequest) -> HttpResponse:
    form, start, end, team_id = _period(request)
    rows = usage.usage_rows(request.user, start, end, team_id)
    context = {
        **admin.site.each_context(request),
        "title": "Token usage",
        "form": form,
        "start": start,
        "end": end,
        "rows": rows,
        "chart": usage.chart(rows, start, end),
        "model_totals": usage.model_totals(rows),
        "totals": {
            "requests": sum(r.requests for r in rows),
            "prompt": sum(r.prompt_tokens for r in rows),
            "completion": sum(r.completion_tokens for r in rows),
            "total": sum(r.total for r in rows),
        },
        "csv_query": request.GET.urlencode(),
        "limits": limits.usage_against_limits(
            list(managed_limits(request.user).select_related("team", "user", "api_key"))
        ),
    }
    return render(request, "review/usage.html", context)


@reviewer_required
def usage_csv(request: HttpRequest) -> HttpResponse:
    _, start, end, team_id = _period(request)
    rows = usage.usage_rows(request.user, start, end, team_id)

    # A small table (one row per day, team, user and key): built at once, not streamed.
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        ["day", "team", "user", "api_key", "requests", "prompt_tokens", "completion_tokens", "model"]
    )
    for r in rows:
        writer.writerow(
            [r.day, r.team, r.user, r.api_key, r.requests, r.prompt_tokens, r.completion_tokens, r.model]
        )
    response = HttpResponse(buffer.getvalue(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="usage-{start}-{end}.csv"'
    return response


@login_required
def team_policy(request: HttpRequest, team_id: int) -> HttpResponse:
    """What the team's admins may review, shown to every member (404 for anyone else)."""
    team = conversation_queries.get_team_for_user(request.user, team_id)
    context = {"team": team, **policy_context(team)}
    return render(request, "review/team_policy.html", context)


def policy_context(team: Any) -> dict[str, Any]:
    admins = Membership.objects.filter(team=team, role=Membership.Role.ADMIN).select_related("user")
    return {
        "policy_team": team,
        "policy": services.policy_for(team),
        "reviewers": [m.user.get_username() for m in admins.order_by("user__username")],
    }
