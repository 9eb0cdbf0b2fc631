"""The conversation list's filters. Each offers only what the reviewer may review, in one query."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.http import HttpRequest

from conversations.ids import parse_id
from conversations.models import ApiKey, Conversation, Message
from review import access


class _Filter(admin.SimpleListFilter):
    def queryset(self, request: HttpRequest, queryset: QuerySet[Conversation]) -> QuerySet[Conversation]:
        value = self.value()
        return queryset if value is None else self.apply(queryset, value)

    def apply(self, queryset: QuerySet[Conversation], value: str) -> QuerySet[Conversation]:
        raise NotImplementedError


class _IdFilter(_Filter):
    field = ""

    def apply(self, queryset: QuerySet[Conversation], value: str) -> QuerySet[Conversation]:
        pk = parse_id(value)  # past 64 bits (or not digits): matches nothing, like a missing id
        if pk is None:
            return queryset.none()
        return queryset.filter(**{self.field: pk})


class TeamFilter(_IdFilter):
    title = "team"
    parameter_name = "team"
    field = "team_id"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            (str(pk), name) for pk, name in access.reviewable_teams(request.user).values_list("pk", "name")
        ]


class OwnerFilter(_IdFilter):
    title = "user"
    parameter_name = "owner"
    field = "owner_id"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        users = get_user_model().objects.order_by("username")
        if not access.is_superuser(request.user):
            users = users.filter(memberships__team_id__in=access.admin_team_ids(request.user)).distinct()
        return [(str(pk), name) for pk, name in users.values_list("pk", "username")]


class ApiKeyFilter(_IdFilter):
    title = "API key"
    parameter_name = "api_key"
    field = "api_key_id"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        keys = ApiKey.objects.filter(team__in=access.reviewable_teams(request.user)).select_related("user")
        return [
            (str(k.pk), f"{k.prefix} ({k.user.get_username()}{', ' + k.name if k.name else ''})")
            for k in keys
        ]


class ModelFilter(_Filter):
    title = "model"
    parameter_name = "model"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        ids = (
            access.reviewable_conversations(request.user)
            .exclude(model_id="")
            .order_by("model_id")
            .values_list("model_id", flat=True)
            .distinct()
        )
        return [(m, m) for m in ids]

    def apply(self, queryset: QuerySet[Conversation], value: str) -> QuerySet[Conversation]:
        # The conversation's model, or the one a reply logged (a browser chat may change model).
        replied = Message.objects.filter(conversation=OuterRef("pk"), role="assistant", params__model=value)
        return queryset.filter(Q(model_id=value) | Exists(replied))


class ConnectionFilter(_Filter):
    """Conversations with a reply through this upstream connection (``embedded``: one that no
    upstream answered)."""

    title = "connection"
    parameter_name = "connection"
    EMBEDDED = "embedded"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        from upstreams.models import Upstream

        names = Upstream.objects.order_by("name").values_list("name", flat=True)
        return [(self.EMBEDDED, "embedded model"), *((n, n) for n in names)]

    def apply(self, queryset: QuerySet[Conversation], value: str) -> QuerySet[Conversation]:
        replies = Message.objects.filter(conversation=OuterRef("pk"), role="assistant")
        if value == self.EMBEDDED:
            replies = replies.filter(Q(params__upstream__isnull=True) | Q(params__upstream=""))
        else:
            replies = replies.filter(params__upstream=value)
        return queryset.filter(Exists(replies))


class StatusFilter(_Filter):
    """Conversations with at least one message in this status (e.g. error, interrupted)."""

    title = "message status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return list(Message.Status.choices)

    def apply(self, queryset: QuerySet[Conversation], value: str) -> QuerySet[Conversation]:
        return queryset.filter(Exists(Message.objects.filter(conversation=OuterRef("pk"), status=value)))


class FlaggedFilter(_Filter):
    title = "flagged"
    parameter_name = "flagged"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Flagged"), ("no", "Not flagged")]

    def apply(self, queryset: QuerySet[Conversation], value: str) -> QuerySet[Conversation]:
        return queryset.filter(review_flag__isnull=value != "yes")


class DeletedFilter(_Filter):
    title = "deleted by its owner"
    parameter_name = "deleted"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Deleted"), ("no", "Not deleted")]

    def apply(self, queryset: QuerySet[Conversation], value: str) -> QuerySet[Conversation]:
        return queryset.filter(deleted_at__isnull=value != "yes")
