"""Invites and single sign-on identities in the admin, read-only, for superusers.

Invites are made and revoked on the team page and with ``manage.py invite`` (each audited); the
admin only shows them. A superuser may delete a single sign-on identity, which unlinks the
account: the provider's next sign-in for that subject then makes a new account.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from teams.models import Invite, SsoIdentity


class SuperuserOnly(admin.ModelAdmin):
    def has_module_permission(self, request: HttpRequest) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_module_permission(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Invite)
class InviteAdmin(SuperuserOnly):
    list_display = ["id", "team", "role", "created_by_name", "created", "expires_at", "state", "used_by"]
    list_filter = ["role", "team"]
    list_select_related = ["team", "used_by"]
    exclude = ["token_hash"]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # revoke on the team page instead: that is audited

    @admin.display(description="state")
    def state(self, obj: Invite) -> str:
        return obj.state()


@admin.register(SsoIdentity)
class SsoIdentityAdmin(SuperuserOnly):
    list_display = ["user", "issuer", "subject", "created", "last_login"]
    search_fields = ["user__username", "subject"]
    list_select_related = ["user"]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_module_permission(request)
