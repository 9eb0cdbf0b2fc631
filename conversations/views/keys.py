"""API keys: create one for a team (shown once, with a Copy button and a sample call), list them by
prefix, team, creation and last use, revoke (after a confirmation).

A new key's plain text is kept server-side in the session (conversations/once.py) between the POST
that makes it and the page that shows it, once: never in a cookie, never again on a reload.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from conversations import actions, once, queries
from conversations.ids import parse_id
from conversations.models import ApiKey
from upstreams.permissions import default_model_id


@require_http_methods(["GET", "HEAD", "POST"])
@login_required
def api_keys(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        team_id = request.POST.get("team", "")
        team = queries.get_team_for_user(request.user, parse_id(team_id) or 0)
        name = " ".join(request.POST.get("name", "").split())[:100]
        key, plain = actions.create_api_key(request.user, team, name)
        once.keep(request, f"api_key:{key.pk}", plain)
        messages.success(request, f"Created the key “{key}”. Copy it now: it is not shown again.")
        return redirect("chat:api_keys")
    new_keys = [plain for _, plain in once.take_all(request, "api_key:")]
    keys = ApiKey.objects.filter(user=request.user).select_related("team").order_by("-created")
    context = {
        "keys": keys,
        "teams": queries.teams_of(request.user),
        "new_keys": new_keys,
        # For the sample call shown with a new key.
        "api_url": request.build_absolute_uri("/v1/chat/completions"),
        "model": default_model_id(),
    }
    response = render(request, "chat/api_keys.html", context)
    response["Cache-Control"] = "no-store"  # the page may hold a new key's only copy
    return response


@require_http_methods(["GET", "HEAD", "POST"])
@login_required
def revoke(request: HttpRequest, key_id: int) -> HttpResponse:
    """GET asks (naming the key by its name, prefix, team, creation and last use), POST revokes."""
    key = queries.get_api_key_for_user(request.user, key_id)
    if request.method != "POST":
        if key.revoked:
            return redirect("chat:api_keys")
        return render(request, "chat/revoke_key.html", {"key": key})
    actions.revoke_api_key(key)
    messages.success(request, f"Revoked the key “{key}”.")
    return redirect("chat:api_keys")
