"""Teams and memberships in the admin.

Superusers manage every team and set its review policy. A team's admins see their teams (and the
policy, read-only: reviewers may not widen their own view) and manage their memberships: add a
member by username, change roles, remove members. Removing a member revokes that member's API keys
for the team (review.services.remove_member).
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from conversations.models import Membership, Team
from review import access, services
from review.filters import TeamFilter


class TeamForm(forms.ModelForm):
    reviewers_see_private = forms.BooleanField(
        required=False,
        label="Reviewers see private chats",
        help_text="Let the team's admins read members' private browser conversations. Members are shown "
        "this setting.",
    )

    class Meta:
        model = Team
        fields = ["name"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["reviewers_see_private"].initial = services.policy_for(
                self.instance
            ).reviewers_see_private


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    form = TeamForm
    list_display = ["name", "private_chats_reviewable", "members_link", "created"]
    search_fields = ["name"]
    list_select_related = ["review_policy"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Team]:
        return access.reviewable_teams(request.user).select_related("review_policy")

    def get_fields(self, request: HttpRequest, obj: Team | None = None) -> list[str]:
        if access.is_superuser(request.user):
            return (
                ["name", "reviewers_see_private", "members_link"]
                if obj
                else ["name", "reviewers_see_private"]
            )
        return ["name", "private_chats_reviewable", "members_link"]

    def get_readonly_fields(self, request: HttpRequest, obj: Team | None = None) -> list[str]:
        return ["members_link", "private_chats_reviewable"]

    def has_module_permission(self, request: HttpRequest) -> bool:
        return access.can_review(request.user)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return access.can_review(request.user)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return access.is_superuser(request.user) and request.user.is_staff

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_add_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Deleting a team would delete its conversations with it: the logs go only by a
        # retention policy, never by a click in the admin.
        return False

    def save_model(self, request: HttpRequest, obj: Team, form: forms.ModelForm, change: bool) -> None:
        super().save_model(request, obj, form, change)
        wanted = form.cleaned_data.get("reviewers_see_private", False)
        if not change or wanted != services.policy_for(obj).reviewers_see_private:
            services.set_policy(obj, reviewers_see_private=wanted, by=request.user)

    @admin.display(description="reviewers see private chats", boolean=True)
    def private_chats_reviewable(self, obj: Team) -> bool:
        policy = getattr(obj, "review_policy", None)
        return bool(policy and policy.reviewers_see_private)

    @admin.display(description="members")
    def members_link(self, obj: Team) -> str:
        url = reverse("admin:conversations_membership_changelist") + f"?team={obj.pk}"
        return format_html('<a href="{}">Members of {}</a>', url, obj.name)


class MembershipAddForm(forms.ModelForm):
    username = forms.CharField(max_length=150, help_text="The person's login name.")

    class Meta:
        model = Membership
        fields = ["team", "role"]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        User = get_user_model()
        username, team = data.get("username"), data.get("team")
        if username:
            user = User.objects.filter(**{User.USERNAME_FIELD: username}, is_active=True).first()
            if user is None:
                self.add_error("username", "There is no active user with this name.")
            elif team is not None and Membership.objects.filter(team=team, user=user).exists():
                self.add_error("username", f"{username} is already a member of {team}.")
            data["user"] = user
        return data


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "team", "role", "created"]
    list_filter = [TeamFilter, "role"]
    search_fields = ["user__username"]
    list_select_related = ["user", "team"]
    actions = ["make_admin", "make_member"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Membership]:
        return access.managed_memberships(request.user).select_related("user", "team")

    def _manages(self, request: HttpRequest, obj: Membership | None) -> bool:
        if not access.can_review(request.user):
            return False
        return obj is None or request.user.is_superuser or obj.team_id in access.admin_team_ids(request.user)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return access.can_review(request.user)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._manages(request, obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return access.can_review(request.user)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._manages(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._manages(request, obj)

    def get_form(self, request: HttpRequest, obj: Membership | None = None, **kwargs: Any) -> type:
        if obj is None:
            kwargs["form"] = MembershipAddForm
            kwargs["fields"] = None
        return super().get_form(request, obj, **kwargs)

    def get_fields(self, request: HttpRequest, obj: Membership | None = None) -> list[str]:
        return ["team", "username", "role"] if obj is None else ["user", "team", "role"]

    def get_readonly_fields(self, request: HttpRequest, obj: Membership | None = None) -> list[str]:
        return [] if obj is None else ["user", "team"]

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "team":
            kwargs["queryset"] = access.reviewable_teams(request.user)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request: HttpRequest, obj: Membership, form: forms.ModelForm, change: bool) -> None:
        if change:
            # The form already put the new role on ``obj``: hand the service the stored row.
            stored = Membership.objects.select_related("user", "team").get(pk=obj.pk)
            services.set_role(stored, form.cleaned_data["role"], by=request.user)
            return
        membership = services.add_member(
            form.cleaned_data["team"], form.cleaned_data["user"], form.cleaned_data["role"], by=request.user
        )
        obj.pk = membership.pk
        obj.refresh_from_db()

    def delete_model(self, request: HttpRequest, obj: Membership) -> None:
        services.remove_member(obj, by=request.user)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Membership]) -> None:
        for membership in queryset.select_related("user", "team"):
            services.remove_member(membership, by=request.user)

    @admin.action(description="Make the selected members team admins")
    def make_admin(self, request: HttpRequest, queryset: QuerySet[Membership]) -> None:
        for membership in queryset.select_related("user", "team"):
            services.set_role(membership, Membership.Role.ADMIN, by=request.user)

    @admin.action(description="Make the selected members plain members")
    def make_member(self, request: HttpRequest, queryset: QuerySet[Membership]) -> None:
        for membership in queryset.select_related("user", "team"):
            services.set_role(membership, Membership.Role.MEMBER, by=request.user)
