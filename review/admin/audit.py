"""The audit trail in the admin: superusers see every entry, a team's admins their teams' entries;
read-only for everyone. Entries export as JSONL (the selected ones, or all the list shows)."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied
from django.db.models import Max, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.urls import path
from django.utils.html import format_html

from review import access, services
from review.export import streaming_response
from review.filters import TeamFilter
from review.models import AuditEntry


def audit_scope(user: Any) -> QuerySet[AuditEntry]:
    """Every entry for a superuser; a team admin's teams' entries; nothing for anyone else."""
    if access.is_superuser(user):
        return AuditEntry.objects.all()
    if not access.can_review(user):
        return AuditEntry.objects.none()
    return AuditEntry.objects.filter(team_id__in=access.admin_team_ids(user))


def jsonl(queryset: QuerySet[AuditEntry]) -> Any:
    for entry in queryset.order_by("created", "id").iterator(chunk_size=500):
        yield (
            json.dumps(
                {
                    "id": entry.pk,
                    "created": entry.created.isoformat(),
                    "actor": entry.actor_name,
                    "actor_id": entry.actor_id,
                    "action": entry.action,
                    "team_id": entry.team_id,
                    "conversation_id": entry.conversation_id,
                    "object": entry.object_repr,
                    "filters": entry.filters,
                    "detail": entry.detail,
                },
                sort_keys=True,
            )
            + "\n"
        )


class ActorFilter(admin.SimpleListFilter):
    title = "who"
    parameter_name = "actor"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        # Only the names in the viewer's own scope (a team admin sees no other team's people).
        scope = audit_scope(request.user)
        names = scope.order_by("actor_name").values_list("actor_name", flat=True).distinct()
        return [(name, name) for name in names]

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        return queryset if self.value() is None else queryset.filter(actor_name=self.value())


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    list_display = ["created", "who", "action", "team", "what", "filters_used", "detail"]
    list_filter = ["action", ActorFilter, TeamFilter, "created"]
    search_fields = ["actor_name", "object_repr", "detail"]
    list_select_related = ["team"]
    show_full_result_count = False
    date_hierarchy = None
    actions = ["export_jsonl"]
    change_list_template = "review/audit_change_list.html"
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
        return access.can_review(request.user)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if not self.has_module_permission(request):
            return False
        return obj is None or audit_scope(request.user).filter(pk=obj.pk).exists()

    def get_queryset(self, request: HttpRequest) -> QuerySet[AuditEntry]:
        return audit_scope(request.user).select_related("team")

    def get_urls(self) -> list:
        export = path(
            "export.jsonl", self.admin_site.admin_view(self.export_view), name="review_audit_export"
        )
        return [export, *super().get_urls()]

    def export_view(self, request: HttpRequest) -> HttpResponse:
        """All the entries the list shows with its current filter and search, as JSONL."""
        if not self.has_module_permission(request):
            raise PermissionDenied
        try:
            queryset = self.get_changelist_instance(request).get_queryset(request)
        except IncorrectLookupParameters:
            return HttpResponseBadRequest("Unknown filter.")
        used = {key: request.GET.getlist(key) for key in request.GET}
        return self._export(request, queryset, {"all_matching": used})

    @admin.action(description="Export the selected entries as JSONL")
    def export_jsonl(self, request: HttpRequest, queryset: QuerySet[AuditEntry]) -> HttpResponse:
        if request.POST.get("select_across") == "1":
            used: dict[str, Any] = {"all_matching": {key: request.GET.getlist(key) for key in request.GET}}
        else:
            used = {"selected": list(queryset.values_list("pk", flat=True))}
        return self._export(request, queryset, used)

    def _export(
        self, request: HttpRequest, queryset: QuerySet[AuditEntry], used: dict[str, Any]
    ) -> HttpResponse:
        # The entries as they are now: the export's own entry (written next) stays out of the file.
        last = queryset.aggregate(last=Max("pk"))["last"] or 0
        queryset = queryset.filter(pk__lte=last)
        count = queryset.count()
        # Exporting the trail is itself audited.
        services.audit(
            request.user,
            AuditEntry.Action.EXPORT,
            object_repr=f"{count} audit entr{'y' if count == 1 else 'ies'} as JSONL",
            filters=used,
            detail=f"format=jsonl audit_entries={count}",
        )
        response = streaming_response(
            request,
            jsonl(queryset),
            "application/x-ndjson",
        )
        response["Content-Disposition"] = 'attachment; filename="audit.jsonl"'
        return response

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
