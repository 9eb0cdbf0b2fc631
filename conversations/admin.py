"""API keys in the admin (the new key is shown once, from the session, never a cookie; revoke).

Teams, memberships, conversations and the audit trail are in the review admin (review/admin/).
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse

from conversations import actions, once
from conversations.models import ApiKey, Membership


class ApiKeyForm(forms.ModelForm):
    class Meta:
        model = ApiKey
        fields = ["user", "team", "name"]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        user, team = data.get("user"), data.get("team")
        if user and team and not Membership.objects.filter(user=user, team=team).exists():
            raise forms.ValidationError(f"{user} is not a member of the team {team}.")
        return data


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "prefix", "user", "team", "created", "last_used_at", "revoked_at"]
    list_filter = ["team"]
    search_fields = ["name", "prefix", "user__username"]
    list_select_related = ["user", "team"]
    actions = ["revoke"]
    change_form_template = "admin/conversations/apikey/change_form.html"

    def get_form(self, request: HttpRequest, obj: ApiKey | None = None, **kwargs: Any) -> type:
        if obj is None:
            kwargs["form"] = ApiKeyForm
        return super().get_form(request, obj, **kwargs)

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        if obj is None:
            return ["user", "team", "name"]
        return ["name", "user", "team", "prefix", "created", "last_used_at", "revoked_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        if obj is None:
            return []
        return ["user", "team", "prefix", "created", "last_used_at", "revoked_at"]

    def save_model(self, request: HttpRequest, obj: ApiKey, form: forms.ModelForm, change: bool) -> None:
        if change:
            obj.save(update_fields=["name"])
            return
        key, plain = actions.create_api_key(obj.user, obj.team, obj.name, by=request.user)
        obj.pk = key.pk
        obj.refresh_from_db()
        # Kept server-side until its change page shows it, once (conversations/once.py).
        once.keep(request, f"admin_api_key:{key.pk}", plain)

    def response_add(
        self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None
    ) -> HttpResponse:
        # Always on to the new key's page: the only page that shows it.
        super().response_add(request, obj, post_url_continue)  # its "added" message
        return HttpResponseRedirect(reverse("admin:conversations_apikey_change", args=[obj.pk]))

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        new_key = once.take(request, f"admin_api_key:{object_id}")
        response = super().change_view(
            request, object_id, form_url, {**(extra_context or {}), "new_key": new_key}
        )
        if new_key is not None:
            response["Cache-Control"] = "no-store"  # the page holds the key's only copy
        return response

    @admin.action(description="Revoke the selected API keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for key in queryset:
            actions.revoke_api_key(key, by=request.user)
        self.message_user(request, f"Revoked {queryset.count()} key(s).")
