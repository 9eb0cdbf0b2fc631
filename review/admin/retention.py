"""Retention policies and legal holds in the admin.

A team's admins (and superusers) set the team's retention policy and hold its conversations or the
whole team; a hold is released by the reviewer who placed it or a superuser. Every change goes
through ``review.retention`` (audited). The conversation list has an action that holds the
selected conversations.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import HttpRequest

from conversations.models import Conversation, Team
from review import access, retention
from review.models import LegalHold, RetentionPolicy


def _teams(request: HttpRequest) -> QuerySet[Team]:
    return access.reviewable_teams(request.user)


@admin.register(RetentionPolicy)
class RetentionPolicyAdmin(admin.ModelAdmin):
    list_display = ["team", "keep_days", "deleted_keep_days", "updated"]
    fields = ["team", "keep_days", "deleted_keep_days"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[RetentionPolicy]:
        return RetentionPolicy.objects.filter(team__in=_teams(request)).select_related("team")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return ["team"] if obj else []

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "team":
            kwargs["queryset"] = _teams(request).filter(retention_policy__isnull=True)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return access.can_review(request.user)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return access.can_review(request.user) and (
            obj is None or _teams(request).filter(pk=obj.team_id).exists()
        )

    has_change_permission = has_view_permission

    def has_add_permission(self, request: HttpRequest) -> bool:
        return access.can_review(request.user)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # set keep_days empty to keep for ever

    def save_model(
        self, request: HttpRequest, obj: RetentionPolicy, form: forms.ModelForm, change: bool
    ) -> None:
        team = obj.team if change else form.cleaned_data["team"]
        saved = retention.set_retention(
            team, keep_days=obj.keep_days, deleted_keep_days=obj.deleted_keep_days, by=request.user
        )
        obj.pk = saved.pk


class LegalHoldForm(forms.ModelForm):
    class Meta:
        model = LegalHold
        fields = ["team", "conversation", "reason"]
        help_texts = {"team": "Hold every conversation of the team…", "conversation": "…or one conversation."}

    def __init__(self, *args: Any, request: HttpRequest, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.request = request

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        team, conversation = data.get("team"), data.get("conversation")
        if (team is None) == (conversation is None):
            raise forms.ValidationError("Choose a team or a conversation (one of them).")
        if not retention.may_hold(self.request.user, team=team, conversation=conversation):
            raise forms.ValidationError("You review neither this team nor this conversation.")
        return data

    def validate_constraints(self, exclude: Any = None) -> None:
        pass


@admin.register(LegalHold)
class LegalHoldAdmin(admin.ModelAdmin):
    form = LegalHoldForm
    list_display = ["__str__", "placed_by", "reason", "created"]
    raw_id_fields = ["conversation"]
    list_select_related = ["team", "placed_by"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[LegalHold]:
        if access.is_superuser(request.user):
            return LegalHold.objects.all()
        teams = access.admin_team_ids(request.user) if access.can_review(request.user) else []
        return LegalHold.objects.filter(Q(team_id__in=teams) | Q(conversation__team_id__in=teams))

    def get_form(self, request: HttpRequest, obj: Any = None, **kwargs: Any) -> type:
        form = super().get_form(request, obj, **kwargs)

        class WithRequest(form):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any, **kw: Any) -> None:
                super().__init__(*args, request=request, **kw)

        return WithRequest

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "team":
            kwargs["queryset"] = _teams(request)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return access.can_review(request.user)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return access.can_review(request.user)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return access.can_review(request.user)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a hold is placed or released, not edited

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is None:
            return access.can_review(request.user)
        return retention.may_release(request.user, obj)

    def save_model(self, request: HttpRequest, obj: LegalHold, form: forms.ModelForm, change: bool) -> None:
        hold = retention.place_hold(
            request.user, team=obj.team, conversation=obj.conversation, reason=obj.reason
        )
        obj.pk = hold.pk

    def delete_model(self, request: HttpRequest, obj: LegalHold) -> None:
        retention.release_hold(obj, by=request.user)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[LegalHold]) -> None:
        for hold in queryset.select_related("team", "conversation"):
            if not retention.may_release(request.user, hold):
                raise PermissionDenied
            retention.release_hold(hold, by=request.user)


@admin.action(description="Place a legal hold on the selected conversations")
def hold_conversations(modeladmin: Any, request: HttpRequest, queryset: QuerySet[Conversation]) -> None:
    count = 0
    for conversation in queryset.select_related("team"):
        retention.place_hold(
            request.user, conversation=conversation, reason="placed from the conversation list"
        )
        count += 1
    messages.success(request, f"{count} conversation(s) put on legal hold: a purge will not erase them.")


@admin.action(description="Restore the selected deleted conversations")
def restore_conversations(modeladmin: Any, request: HttpRequest, queryset: QuerySet[Conversation]) -> None:
    from review import services

    restored = sum(services.restore(c, by=request.user) for c in queryset.filter(deleted_at__isnull=False))
    messages.success(
        request, f"{restored} conversation(s) restored (purged ones have nothing left to restore)."
    )
