"""The team page (members, roles, keys, invites) for a team's admins, and the invite link's page.

A team's admins manage their teams here, outside the admin; superusers manage every team. Anyone
else gets 404, as for a missing page. Every change goes through the services that the admin and
the commands use (``review.services``, ``teams.services``), so the audit trail and live access
(removing a member closes that member's sockets at once) are the same whichever way it is done.
"""

from __future__ import annotations

from typing import Any

from axes.handlers.proxy import AxesProxyHandler
from django import forms
from django.contrib import messages
from django.contrib.auth import authenticate, get_user_model, login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.db.models import Count, Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from conversations import actions as conversation_actions
from conversations import once
from conversations.models import ApiKey, Membership, Team
from review import access
from review import services as review_services
from review.login_throttle import lockout_response
from teams import services
from teams.models import Invite

RECENT_INVITES = 10  # used, revoked and expired invites listed under the pending ones


# --- Who manages which team ----------------------------------------------------------------------


def managed_teams(user: Any) -> QuerySet[Team]:
    """Every team for a superuser; the teams ``user`` is an admin of otherwise."""
    if not user.is_authenticated or not user.is_active:
        return Team.objects.none()
    if user.is_superuser:
        return Team.objects.all()
    return Team.objects.filter(memberships__user=user, memberships__role=Membership.Role.ADMIN)


def _managed_team(request: HttpRequest, team_id: int) -> Team:
    team = managed_teams(request.user).filter(pk=team_id).first()
    if team is None:
        raise Http404("No such team")
    return team


def _is_last_admin(membership: Membership) -> bool:
    return (
        membership.role == Membership.Role.ADMIN
        and not Membership.objects.filter(team_id=membership.team_id, role=Membership.Role.ADMIN)
        .exclude(pk=membership.pk)
        .exists()
    )


def _last_admin_guard(request: HttpRequest, membership: Membership) -> bool:
    """A team admin may not leave the team without an admin (a superuser may)."""
    if request.user.is_superuser or not _is_last_admin(membership):
        return False
    messages.error(
        request,
        f"{membership.user.get_username()} is the last admin of {membership.team}: "
        "make someone else admin first.",
    )
    return True


# --- The team page -------------------------------------------------------------------------------


class InviteForm(forms.Form):
    role = forms.ChoiceField(choices=Membership.Role.choices, initial=Membership.Role.MEMBER)
    email = forms.EmailField(
        required=False, max_length=254, help_text="Optional: the invite is mailed there too."
    )


@login_required
def team_list(request: HttpRequest) -> HttpResponse:
    teams = list(managed_teams(request.user).annotate(members=Count("memberships")).order_by("name"))
    if not teams:
        raise Http404("You manage no team")
    if len(teams) == 1 and not request.user.is_superuser:
        return redirect("teams:team", teams[0].pk)
    return render(request, "teams/team_list.html", {"teams": teams})


@require_http_methods(["GET", "HEAD"])
@login_required
def team_page(request: HttpRequest, team_id: int) -> HttpResponse:
    team = _managed_team(request, team_id)
    now_invites = list(Invite.objects.filter(team=team).order_by("-created")[:200])
    pending = [i for i in now_invites if i.state() == Invite.State.PENDING]
    others = [i for i in now_invites if i.state() != Invite.State.PENDING][:RECENT_INVITES]
    members = list(
        Membership.objects.filter(team=team)
        .select_related("user")
        .annotate(
            keys=Count("user__api_keys", filter=Q(user__api_keys__team=team, user__api_keys__revoked_at=None))
        )
        .order_by("user__username")
    )
    keys = ApiKey.objects.filter(team=team).select_related("user").order_by("revoked_at", "-created")
    new_links = [link for _, link in once.take_all(request, f"invite:{team.pk}:")]
    context = {
        "team": team,
        "members": members,
        "roles": Membership.Role.choices,
        "keys": keys,
        "pending": pending,
        "past_invites": others,
        "new_links": new_links,
        "form": InviteForm(),
        "can_mail": services.mail_configured(),
        "other_teams": managed_teams(request.user).exclude(pk=team.pk).order_by("name")[:50],
    }
    response = render(request, "teams/team.html", context)
    response["Cache-Control"] = "no-store"  # the page may hold a new invite link's only copy
    return response


@require_POST
@login_required
def create_invite(request: HttpRequest, team_id: int) -> HttpResponse:
    team = _managed_team(request, team_id)
    form = InviteForm(request.POST)
    if not form.is_valid():
        for field, errors in form.errors.items():
            messages.error(
                request, f"{field}: {' '.join(errors)}" if field != "__all__" else " ".join(errors)
            )
        return redirect("teams:team", team.pk)
    email = form.cleaned_data["email"] if services.mail_configured() else ""
    invite, token = services.create_invite(team, form.cleaned_data["role"], by=request.user, email=email)
    link = request.build_absolute_uri(services.invite_path(token))
    once.keep(request, f"invite:{team.pk}:{invite.pk}", link)
    if email:
        sent = services.mail_invite(invite, link, by=request.user)
        if sent.ok:
            messages.success(request, f"Invite mailed to {email}. The link is below too, shown only now.")
        else:
            messages.error(
                request,
                f"The invite could not be mailed to {email} ({sent.error}): send the link below yourself.",
            )
    else:
        messages.success(request, "Invite made. Send the link below to the person: it is shown only now.")
    return redirect("teams:team", team.pk)


@require_POST
@login_required
def revoke_invite(request: HttpRequest, team_id: int, invite_id: int) -> HttpResponse:
    team = _managed_team(request, team_id)
    invite = Invite.objects.filter(team=team, pk=invite_id).select_related("team").first()
    if invite is None:
        raise Http404("No such invite")
    if services.revoke_invite(invite, by=request.user):
        messages.success(request, f"Revoked invite {invite.pk}: its link no longer works.")
    else:
        messages.error(request, f"Invite {invite.pk} was already {invite.state()}.")
    return redirect("teams:team", team.pk)


def _membership(team: Team, membership_id: int) -> Membership:
    membership = Membership.objects.filter(team=team, pk=membership_id).select_related("user", "team").first()
    if membership is None:
        raise Http404("No such member")
    return membership


@require_POST
@login_required
def set_role(request: HttpRequest, team_id: int, membership_id: int) -> HttpResponse:
    team = _managed_team(request, team_id)
    membership = _membership(team, membership_id)
    role = request.POST.get("role", "")
    if role not in Membership.Role.values:
        messages.error(request, "Choose member or admin.")
    elif role != membership.role and not (
        role == Membership.Role.MEMBER and _last_admin_guard(request, membership)
    ):
        review_services.set_role(membership, role, by=request.user)
        messages.success(request, f"{membership.user.get_username()} is now {role} of {team}.")
    return redirect("teams:team", team.pk)


@require_http_methods(["GET", "HEAD", "POST"])
@login_required
def remove_member(request: HttpRequest, team_id: int, membership_id: int) -> HttpResponse:
    team = _managed_team(request, team_id)
    membership = _membership(team, membership_id)
    if request.method == "POST":
        if not _last_admin_guard(request, membership):
            name = membership.user.get_username()
            revoked = review_services.remove_member(membership, by=request.user)
            access.forget(request.user)
            messages.success(request, f"Removed {name} from {team}; {revoked} API key(s) revoked.")
            if not managed_teams(request.user).filter(pk=team.pk).exists():
                return redirect("chat:home")  # an admin who removed themselves
        return redirect("teams:team", team.pk)
    keys = ApiKey.objects.filter(team=team, user=membership.user, revoked_at=None).count()
    return render(request, "teams/remove_member.html", {"team": team, "membership": membership, "keys": keys})


@require_POST
@login_required
def revoke_key(request: HttpRequest, team_id: int, key_id: int) -> HttpResponse:
    team = _managed_team(request, team_id)
    key = ApiKey.objects.filter(team=team, pk=key_id).select_related("user").first()
    if key is None:
        raise Http404("No such key")
    conversation_actions.revoke_api_key(key, by=request.user)
    messages.success(request, f"Revoked {key.user.get_username()}'s key “{key}”.")
    return redirect("teams:team", team.pk)


# --- The invite link -----------------------------------------------------------------------------

PROBLEMS = {
    "unknown": (
        404,
        "This invite link is not valid",
        "Check that the whole link was copied, or ask for a new invite.",
    ),
    Invite.State.USED: (
        410,
        "This invite was already used",
        "An invite works once. Ask the team's admin for a new one, or log in if it was you.",
    ),
    Invite.State.EXPIRED: (
        410,
        "This invite has expired",
        "Invites work for 7 days. Ask the team's admin for a new one.",
    ),
    Invite.State.REVOKED: (
        410,
        "This invite was revoked",
        "The team's admin withdrew it. Ask them for a new one if you should join.",
    ),
}


def _problem(request: HttpRequest, state: str, invite: Invite | None = None) -> HttpResponse:
    status, title, advice = PROBLEMS[state]
    context = {"title": title, "advice": advice, "state": state, "invite": invite}
    return render(request, "teams/invite_problem.html", context, status=status)


class AcceptForm(UserCreationForm):
    """Django's sign-up form: a free username, the password twice, the site's password validators
    (with the username among the attributes a password must not resemble)."""

    class Meta(UserCreationForm.Meta):
        model = get_user_model()
        fields = ("username",)


@require_http_methods(["GET", "HEAD", "POST"])
def invite(request: HttpRequest, token: str) -> HttpResponse:
    found = services.find_invite(token)
    if found is None:
        return _problem(request, "unknown")
    state = found.state()
    if state != Invite.State.PENDING:
        return _problem(request, state, found)
    context: dict[str, Any] = {"invite": found, "token": token}
    user = request.user
    if user.is_authenticated:
        member = Membership.objects.filter(team=found.team, user=user).exists()
        if request.method == "POST" and not member:
            try:
                services.accept_as(token, user)
            except services.InviteUnusable as exc:
                return _problem(request, exc.state, found)
            except services.AlreadyMember:
                member = True
            else:
                messages.success(request, f"You joined {found.team} as {found.role}.")
                return redirect("chat:home")
        context["already_member"] = member
        return render(request, "teams/invite_signed_in.html", context)

    form = AcceptForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        username, password = form.cleaned_data["username"], form.cleaned_data["password1"]
        # The login throttle (django-axes) stays in force: an address locked out of logging in
        # gets the same 429 page here, before anything is made.
        if AxesProxyHandler.is_locked(request, {"username": username}):
            request.axes_credentials = {"username": username}
            return lockout_response(request)
        try:
            services.accept_with_new_account(token, username, password)
        except services.InviteUnusable as exc:
            return _problem(request, exc.state, found)
        except services.UsernameTaken:
            form.add_error("username", "A user with that username already exists.")
        else:
            # Through authenticate(), not a bare login(): the backends' checks apply as on the login page.
            signed_in = authenticate(request, username=username, password=password)
            if signed_in is None:
                messages.info(request, f"Your account {username} is ready and in {found.team}: log in.")
                return redirect("login")
            login(request, signed_in)
            messages.success(request, f"Welcome, {username}: you joined {found.team} as {found.role}.")
            return redirect("chat:home")
    context["form"] = form
    return render(request, "teams/invite.html", context, status=400 if form.errors else 200)
