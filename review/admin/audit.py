"""The audit trail in the admin: superusers only, and read-only for them too."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html

from review import access
from review.models import AuditEntry


class ActorFilter(admin.SimpleListFilter):
    title = "who"
    parameter_name = "actor"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        names = AuditEntry.objects.order_by("actor_name").values_list("actor_name", flat=True).distinct()
        return [(name, name) for name in names]

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        return queryset if self.value() is None else queryset.filter(actor_name=self.value())


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    list_display = ["created", "who", "action", "team", "what", "filters_used", "detail"]
    list_filter = ["action", ActorFilter, "team", "created"]
    search_fields = ["actor_name", "object_repr", "detail"]
    list_select_related = ["team"]
    show_full_result_count = False
    date_hierarchy = None
    fields = [
        "created",
        "actor",
        "actor_name",
        "action",
        "team",
        "conversation",
        "object_repr",
        "filters",
        "detail",
    ]
    readonly_fields = fields

    def has_module_permission(self, request: HttpRequest) -> bool:
        return access.is_superuser(request.user) and request.user.is_staff

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_module_permission(request)

    # Immutable, even for superusers: no add, change or delete, and so no delete action.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="who", ordering="actor_name")
    def who(self, obj: AuditEntry) -> str:
        return obj.actor_name

    @admin.display(description="object")
    def what(self, obj: AuditEntry) -> str:
        return obj.object_repr

    @admin.display(description="filter used")
    def filters_used(self, obj: AuditEntry) -> str:
        return format_html("<code>{}</code>", json.dumps(obj.filters, sort_keys=True)) if obj.filters else ""
