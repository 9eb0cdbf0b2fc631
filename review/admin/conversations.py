"""Conversations in the admin: a scoped, filterable list; the transcript (audited); flags; exports."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseRedirect,
    QueryDict,
    StreamingHttpResponse,
)
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.views.decorators.http import require_POST

from conversations import queries
from conversations.models import Conversation
from conversations.render import render_markdown
from review import access, export, filters, services
from review.admin.retention import hold_conversations, restore_conversations
from review.search import search_conversations

FORMATS = {
    "jsonl": ("application/x-ndjson; charset=utf-8", export.jsonl),
    "csv": ("text/csv; charset=utf-8", export.csv_lines),
}


def streaming_export(
    request: HttpRequest, queryset: QuerySet[Conversation], fmt: str
) -> StreamingHttpResponse:
    content_type, lines = FORMATS[fmt]
    response = export.streaming_response(request, lines(queryset), content_type)
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    response["Content-Disposition"] = f'attachment; filename="conversations-{stamp}.{fmt}"'
    return response


class ReviewPermissions:
    """Permissions from Membership roles (review.access), never from model permissions alone."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return access.can_review(request.user)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return access.can_review(request.user)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Conversation)
class ConversationAdmin(ReviewPermissions, admin.ModelAdmin):
    change_list_template = "review/conversation_change_list.html"
    list_display = [
        "conversation",
        "deleted",
        "source",
        "team",
        "owner",
        "api_key_prefix",
        "request_user",
        "model_id",
        "visibility",
        "flag_note",
        "created",
    ]
    # The first column links to the transcript, carrying the list's filters along
    # (_changelist_filters), so that the view's audit entry records the filter it came from.
    list_filter = [
        filters.TeamFilter,
        filters.OwnerFilter,
        filters.ApiKeyFilter,
        "source",
        filters.ModelFilter,
        filters.ConnectionFilter,
        filters.StatusFilter,
        filters.FlaggedFilter,
        filters.DeletedFilter,
        "visibility",
        "created",
    ]
    search_fields = ["title"]  # shows the box; get_search_results searches message text too
    search_help_text = "Searches message text, titles, owners and the API request's user field."
    list_select_related = ["owner", "team", "api_key", "review_flag"]
    show_full_result_count = False  # one COUNT instead of two
    list_per_page = 50
    actions = ["export_jsonl", "export_csv", hold_conversations, restore_conversations]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Conversation]:
        return access.reviewable_conversations(request.user)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Conversation], search_term: str
    ) -> tuple[QuerySet[Conversation], bool]:
        return search_conversations(queryset, search_term), False

    # --- Columns ---

    @admin.display(description="conversation", ordering="title")
    def conversation(self, obj: Conversation) -> str:
        return str(obj)

    @admin.display(description="deleted", ordering="deleted_at")
    def deleted(self, obj: Conversation) -> str:
        return (
            format_html('<span class="review-deleted">deleted {}</span>', obj.deleted_at.date())
            if obj.deleted_at
            else ""
        )

    @admin.display(description="API key")
    def api_key_prefix(self, obj: Conversation) -> str:
        return obj.api_key.prefix if obj.api_key else ""

    @admin.display(description="flag")
    def flag_note(self, obj: Conversation) -> str:
        flag = getattr(obj, "review_flag", None)
        return f"⚑ {flag.note}".strip() if flag else ""

    # --- Views ---

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            path("export/<str:fmt>/", wrap(self.export_view), name="conversations_conversation_export"),
            path(
                "<int:pk>/flag/", wrap(require_POST(self.flag_view)), name="conversations_conversation_flag"
            ),
            *super().get_urls(),
        ]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        """The read-only transcript. Every view by someone other than the owner is audited."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        conversation = access.get_conversation_for_reviewer(request.user, object_id)
        messages_ = list(conversation.messages.select_related("author").order_by("id"))
        versions = queries.versions_of(messages_)
        came_from = QueryDict(request.GET.get("_changelist_filters", ""))
        services.record_view(request.user, conversation, {key: came_from.getlist(key) for key in came_from})
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Transcript: {conversation}",
            "conversation": conversation,
            "flag": getattr(conversation, "review_flag", None),
            "rows": [
                {
                    "message": m,
                    "html": render_markdown(m.content),
                    "params": json.dumps(m.params, indent=2, sort_keys=True) if m.params else "",
                    "tools": json.dumps(m.tools, indent=2, ensure_ascii=False) if m.tools else "",
                    # "version 2 of 3": a regenerated answer or an edited message (all are shown)
                    "version": (versions[m.pk].index(m.pk) + 1, len(versions[m.pk]))
                    if len(versions[m.pk]) > 1
                    else None,
                }
                for m in messages_
            ],
            "totals": {
                "prompt": sum(m.prompt_tokens or 0 for m in messages_),
                "completion": sum(m.completion_tokens or 0 for m in messages_),
            },
        }
        return TemplateResponse(request, "review/transcript.html", context)

    def flag_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        conversation = access.get_conversation_for_reviewer(request.user, pk)
        if request.POST.get("action") == "unflag":
            if services.unflag(conversation, request.user):
                messages.success(request, "The flag was removed.")
        else:
            services.flag(conversation, request.user, request.POST.get("note", "").strip()[:2000])
            messages.success(request, "The conversation is flagged.")
        return HttpResponseRedirect(reverse("admin:conversations_conversation_change", args=[pk]))

    def export_view(self, request: HttpRequest, fmt: str) -> HttpResponse:
        """Export the list as currently filtered and searched (the query string of the list page)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        if fmt not in FORMATS:
            return HttpResponseBadRequest("Unknown export format.")
        try:
            queryset = self.get_changelist_instance(request).get_queryset(request)
        except IncorrectLookupParameters:
            return HttpResponseBadRequest("Unknown filter.")
        used = {key: request.GET.getlist(key) for key in request.GET}
        services.record_export(request.user, fmt=fmt, filters=used, count=queryset.count())
        return streaming_export(request, queryset, fmt)

    # --- Actions (on the selected rows) ---

    def _export_selected(
        self, request: HttpRequest, queryset: QuerySet[Conversation], fmt: str
    ) -> HttpResponse:
        used: dict[str, Any]
        if request.POST.get("select_across") == "1":  # "select all N": record the filter, not N ids
            used = {"all_matching": {key: request.GET.getlist(key) for key in request.GET}}
            count = queryset.count()
        else:
            used = {"selected": list(queryset.values_list("pk", flat=True))}
            count = len(used["selected"])
        services.record_export(request.user, fmt=fmt, filters=used, count=count)
        return streaming_export(request, queryset, fmt)

    @admin.action(description="Export the selected conversations as JSONL")
    def export_jsonl(self, request: HttpRequest, queryset: QuerySet[Conversation]) -> HttpResponse:
        return self._export_selected(request, queryset, "jsonl")

    @admin.action(description="Export the selected conversations as CSV")
    def export_csv(self, request: HttpRequest, queryset: QuerySet[Conversation]) -> HttpResponse:
        return self._export_selected(request, queryset, "csv")
