"""Limits in the admin: a team's admins set them for their team, its members (within the team) and
its API keys; superusers for any scope, users everywhere included. Every change goes through
``review.limits.set_limits`` (audited)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.db.models import Q, QuerySet
from django.http import HttpRequest

from conversations.models import ApiKey, Membership, Team
from review import access, limits
from review.models import Limit


def managed_limits(user: Any) -> QuerySet[Limit]:
    if access.is_superuser(user):
        return Limit.objects.all()
    if not access.can_review(user):
        return Limit.objects.none()
    teams = access.admin_team_ids(user)
    return Limit.objects.filter(Q(team_id__in=teams) | Q(api_key__team_id__in=teams))


class LimitForm(forms.ModelForm):
    class Meta:
        model = Limit
        fields = ["team", "user", "api_key", "requests_per_minute", "tokens_per_day"]
        help_texts = {
            "team": "A team alone: the team's limits. With a user: that member's, within the team.",
            "user": "Alone (superusers only): the user's limits everywhere.",
            "api_key": "Alone: the key's limits.",
            "requests_per_minute": "Empty: no limit.",
            "tokens_per_day": "Prompt + completion tokens per UTC day. Empty: no limit.",
        }

    def __init__(self, *args: Any, request: HttpRequest, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.request = request

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if self.instance.pk is not None:  # the scope of a row is fixed (and checked by the admin)
            return data
        team, user, key = data.get("team"), data.get("user"), data.get("api_key")
        superuser = access.is_superuser(self.request.user)
        if key is not None and (team is not None or user is not None):
            raise forms.ValidationError("An API key's limits name the key alone.")
        if key is None and team is None and user is None:
            raise forms.ValidationError("Choose a team, a user, both, or an API key.")
        if not superuser:
            teams = access.admin_team_ids(self.request.user)
            if key is not None and key.team_id not in teams:
                raise forms.ValidationError("You manage only your teams' keys.")
            if key is None and team is None:
                raise forms.ValidationError(
                    "Only a superuser sets a user's limits everywhere: choose the team."
                )
            if team is not None and team.pk not in teams:
                raise forms.ValidationError("You manage only your teams' limits.")
        if (
            team is not None
            and user is not None
            and not Membership.objects.filter(team=team, user=user).exists()
        ):
            self.add_error("user", f"{user} is not a member of {team}.")
        if Limit.objects.filter(team=team, user=user, api_key=key).exists():
            raise forms.ValidationError("This scope has limits already: change those.")
        return data

    def validate_unique(self) -> None:  # checked in clean (the constraints are conditional)
        pass

    def validate_constraints(self, exclude: Any = None) -> None:
        pass


@admin.register(Limit)
class LimitAdmin(admin.ModelAdmin):
    form = LimitForm
    list_display = ["scope", "requests_per_minute", "tokens_per_day", "updated"]
    list_select_related = ["team", "user", "api_key"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Limit]:
        return managed_limits(request.user).select_related("team", "user", "api_key")

    def get_form(self, request: HttpRequest, obj: Limit | None = None, **kwargs: Any) -> type:
        form = super().get_form(request, obj, **kwargs)

        class WithRequest(form):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any, **kw: Any) -> None:
                super().__init__(*args, request=request, **kw)

        return WithRequest

    def get_readonly_fields(self, request: HttpRequest, obj: Limit | None = None) -> list[str]:
        return ["team", "user", "api_key"] if obj else []

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if not access.is_superuser(request.user):
            teams = access.admin_team_ids(request.user)
            if db_field.name == "team":
                kwargs["queryset"] = Team.objects.filter(pk__in=teams)
            elif db_field.name == "user":
                kwargs["queryset"] = (
                    get_user_model().objects.filter(memberships__team_id__in=teams).distinct()
                )
            elif db_field.name == "api_key":
                kwargs["queryset"] = ApiKey.objects.filter(team_id__in=teams, revoked_at=None)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return access.can_review(request.user)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return access.can_review(request.user) and (obj is None or self._manages(request, obj))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return access.can_review(request.user)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_view_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_view_permission(request, obj)

    def _manages(self, request: HttpRequest, obj: Limit) -> bool:
        return managed_limits(request.user).filter(pk=obj.pk).exists()

    def save_model(self, request: HttpRequest, obj: Limit, form: forms.ModelForm, change: bool) -> None:
        scope = {"team": obj.team, "user": obj.user, "api_key": obj.api_key}
        saved = limits.set_limits(
            **scope,
            requests_per_minute=form.cleaned_data.get("requests_per_minute"),
            tokens_per_day=form.cleaned_data.get("tokens_per_day"),
            by=request.user,
        )
        if saved is not None:
            obj.pk = saved.pk
            obj.refresh_from_db()

    def delete_model(self, request: HttpRequest, obj: Limit) -> None:
        limits.set_limits(
            team=obj.team,
            user=obj.user,
            api_key=obj.api_key,
            requests_per_minute=None,
            tokens_per_day=None,
            by=request.user,
        )

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Limit]) -> None:
        for obj in queryset.select_related("team", "user", "api_key"):
            self.delete_model(request, obj)

    @admin.display(description="scope")
    def scope(self, obj: Limit) -> str:
        return obj.scope_label
