"""Upstreams in the admin: superusers only. The API key is write-only: a blank field keeps the
stored one, and the page only ever says whether one is set."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from conversations.models import Team
from review import access
from upstreams import audit, registry, services
from upstreams.models import TeamModels, Upstream


def _superuser(request: HttpRequest) -> bool:
    return bool(request.user.is_active and request.user.is_staff and request.user.is_superuser)


class UpstreamForm(forms.ModelForm):
    api_key = forms.CharField(
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="Stored encrypted and never shown again. Leave blank to keep the current key.",
    )
    base_url = forms.URLField(
        max_length=500, assume_scheme="https", help_text="Its OpenAI-compatible root, ending in /v1."
    )
    clear_api_key = forms.BooleanField(required=False, help_text="Remove the stored key.")
    listed_models = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Model ids it serves, one a line, beside those its GET /v1/models reports.",
    )

    class Meta:
        model = Upstream
        fields = [
            "name",
            "base_url",
            "enabled",
            "max_concurrent",
            "queue_max",
            "connect_timeout",
            "read_timeout",
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.initial["listed_models"] = "\n".join(self.instance.listed_models or [])

    def clean_base_url(self) -> str:
        return services.normalize_base_url(self.cleaned_data["base_url"])

    def clean_listed_models(self) -> list[str]:
        lines = (line.strip() for line in self.cleaned_data["listed_models"].splitlines())
        return list(dict.fromkeys(line for line in lines if line))

    def save(self, commit: bool = True) -> Upstream:
        upstream = super().save(commit=False)
        upstream.listed_models = self.cleaned_data["listed_models"]
        if self.cleaned_data.get("clear_api_key"):
            upstream.api_key_encrypted = ""
        elif self.cleaned_data.get("api_key"):
            upstream.api_key_encrypted = services.crypto.encrypt(self.cleaned_data["api_key"])
        if commit:
            upstream.save()
        return upstream


@admin.register(Upstream)
class UpstreamAdmin(admin.ModelAdmin):
    form = UpstreamForm
    list_display = [
        "name",
        "base_url",
        "enabled",
        "max_concurrent",
        "queue_max",
        "served",
        "key_set",
        "health",
    ]
    readonly_fields = ["key_set", "discovered_models", "models_refreshed_at", "refresh_error"]
    actions = ["refresh"]

    def get_fields(self, request: HttpRequest, obj: Upstream | None = None) -> list[str]:
        return [
            *UpstreamForm.Meta.fields,
            "api_key",
            "clear_api_key",
            "key_set",
            "listed_models",
            "discovered_models",
            "models_refreshed_at",
            "refresh_error",
        ]

    @admin.display(description="models")
    def served(self, obj: Upstream) -> str:
        return ", ".join(obj.model_ids) or "-"

    @admin.display(description="API key", boolean=True)
    def key_set(self, obj: Upstream) -> bool:
        return obj.has_api_key

    @admin.display(description="health")
    def health(self, obj: Upstream) -> str:
        connection = registry.pool().connections.get(obj.name)
        if not obj.enabled:
            return "disabled"
        if connection is None:
            return "not loaded yet"
        return "healthy" if connection.healthy else f"unhealthy: {connection.error}"

    @admin.action(description="Ask the selected upstreams for their models now")
    def refresh(self, request: HttpRequest, queryset: QuerySet[Upstream]) -> None:
        for upstream in queryset:
            state = services.check(upstream)
            if state["healthy"]:
                self.message_user(request, f"{upstream.name}: {', '.join(upstream.model_ids) or 'no models'}")
            else:
                self.message_user(request, f"{upstream.name}: {state['error']}", messages.WARNING)
        registry.invalidate()

    def save_model(self, request: HttpRequest, obj: Upstream, form: Any, change: bool) -> None:
        before = {}
        if change:  # the stored values, for the audit entry (the form has changed ``obj`` already)
            before = Upstream.objects.filter(pk=obj.pk).values(*UpstreamForm.Meta.fields, "listed_models")[0]
        super().save_model(request, obj, form, change)
        if change:
            audit.upstream_changed(obj, request.user, form.changed_data, before)
        else:
            audit.upstream_added(obj, request.user)
        registry.invalidate()

    def delete_model(self, request: HttpRequest, obj: Upstream) -> None:
        audit.upstream_removed(obj, request.user)
        super().delete_model(request, obj)
        registry.invalidate()

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Upstream]) -> None:
        for upstream in queryset:
            audit.upstream_removed(upstream, request.user)
        super().delete_queryset(request, queryset)
        registry.invalidate()

    def has_module_permission(self, request: HttpRequest) -> bool:
        return _superuser(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return _superuser(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return _superuser(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return _superuser(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return _superuser(request)


def available_models() -> list[str]:
    """The embedded model and every upstream model (the aliases follow CHAT_DEFAULT_MODEL)."""
    from conversations.runtime import get_runtime

    own = get_runtime().model_id
    return list(dict.fromkeys([*([own] if own else []), *registry.pool().model_ids()]))


class TeamModelsForm(forms.ModelForm):
    models = forms.MultipleChoiceField(
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="The team may use only the models ticked (delete this entry to allow every model).",
    )

    class Meta:
        model = TeamModels
        fields = ["team", "models"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        current = list(self.instance.models or []) if self.instance.pk else []
        self.fields["models"].choices = [(m, m) for m in dict.fromkeys([*available_models(), *current])]


@admin.register(TeamModels)
class TeamModelsAdmin(admin.ModelAdmin):
    """Team admins choose their teams' models; superusers any team's."""

    form = TeamModelsForm
    list_display = ["team", "chosen"]

    @admin.display(description="models")
    def chosen(self, obj: TeamModels) -> str:
        return ", ".join(obj.models) or "(none)"

    def _teams(self, request: HttpRequest) -> list[int] | None:
        return None if access.is_superuser(request.user) else access.admin_team_ids(request.user)

    def save_model(self, request: HttpRequest, obj: TeamModels, form: Any, change: bool) -> None:
        previous = TeamModels.objects.filter(pk=obj.pk).values_list("team_id", flat=True).first()
        super().save_model(request, obj, form, change)
        if previous is not None and previous != obj.team_id:  # moved to another team: that one's reset
            audit.team_models(Team.objects.get(pk=previous), request.user, None)
        if not change or "models" in form.changed_data or previous != obj.team_id:
            audit.team_models(obj.team, request.user, list(obj.models))

    def delete_model(self, request: HttpRequest, obj: TeamModels) -> None:
        audit.team_models(obj.team, request.user, None)
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[TeamModels]) -> None:
        for choice in queryset.select_related("team"):
            audit.team_models(choice.team, request.user, None)
        super().delete_queryset(request, queryset)

    def get_queryset(self, request: HttpRequest) -> QuerySet[TeamModels]:
        teams = self._teams(request)
        qs = super().get_queryset(request).select_related("team")
        return qs if teams is None else qs.filter(team_id__in=teams)

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        field = super().formfield_for_foreignkey(db_field, request, **kwargs)
        teams = self._teams(request)
        if db_field.name == "team" and teams is not None:
            field.queryset = field.queryset.filter(pk__in=teams)
        return field

    def _allowed(self, request: HttpRequest, obj: TeamModels | None = None) -> bool:
        if not (request.user.is_active and request.user.is_staff):
            return False
        teams = self._teams(request)
        return teams is None or (bool(teams) and (obj is None or obj.team_id in teams))

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self._allowed(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._allowed(request, obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self._allowed(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._allowed(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._allowed(request, obj)
