"""The authorization matrix: superuser, team-A admin, team-A member, team-B admin and anonymous
against every review URL. Team B's admin gets 0 rows or 404 for team A's data; is_staff alone
(bob) gets nothing."""

from __future__ import annotations

import json

import pytest
from django.test import Client
from django.urls import reverse

from review import services
from review.models import AuditEntry
from tests.review_data import ALPHA, ALPHA_REVIEWABLE, World

ROLES = ["root", "alice", "bob", "charlie", "anonymous"]


def client_for(world: World, role: str) -> Client:
    client = Client()
    if role != "anonymous":
        client.force_login(world.user(role))
    return client


def listed(world: World, response) -> set[str]:
    """The names (from review_data) of the conversations a list page shows."""
    page = response.content.decode()
    return {
        name
        for name, conv in world.conversations.items()
        if reverse("admin:conversations_conversation_change", args=[conv.pk]) in page
    }


def exported(world: World, response) -> set[str]:
    ids = {json.loads(line)["metadata"]["id"] for line in b"".join(response.streaming_content).splitlines()}
    return {name for name, conv in world.conversations.items() if conv.pk in ids}


def is_login_redirect(response) -> bool:
    return response.status_code == 302 and "/login/" in response["Location"]


@pytest.mark.parametrize(
    "role, expected",
    [
        ("root", ALPHA | {"charlie_api"}),
        ("alice", ALPHA_REVIEWABLE),
        ("charlie", {"charlie_api"}),
    ],
)
def test_it_scopes_the_conversation_list(world: World, role: str, expected: set[str]) -> None:
    response = client_for(world, role).get(reverse("admin:conversations_conversation_changelist"))
    assert response.status_code == 200
    assert listed(world, response) == expected


def test_it_refuses_the_conversation_list_to_a_member_and_to_anonymous(world: World) -> None:
    url = reverse("admin:conversations_conversation_changelist")
    assert client_for(world, "bob").get(url).status_code == 403
    assert is_login_redirect(client_for(world, "anonymous").get(url))


@pytest.mark.parametrize(
    "role, status",
    [("root", 200), ("alice", 200), ("bob", 403), ("charlie", 404), ("anonymous", 302)],
)
def test_it_scopes_the_transcript(world: World, role: str, status: int) -> None:
    url = reverse("admin:conversations_conversation_change", args=[world.conversations["bob_api"].pk])
    response = client_for(world, role).get(url)
    assert response.status_code == status
    if status == 302:
        assert is_login_redirect(response)


@pytest.mark.parametrize(
    "role, status",
    [("root", 302), ("alice", 302), ("bob", 403), ("charlie", 404), ("anonymous", 302)],
)
def test_it_scopes_flagging(world: World, role: str, status: int) -> None:
    conversation = world.conversations["bob_shared"]
    url = reverse("admin:conversations_conversation_flag", args=[conversation.pk])
    response = client_for(world, role).post(url, {"note": "look"})
    assert response.status_code == status
    flagged = hasattr(conversation.__class__.objects.get(pk=conversation.pk), "review_flag")
    assert flagged == (role in ("root", "alice"))


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
@pytest.mark.parametrize(
    "role, expected",
    [("root", ALPHA | {"charlie_api"}), ("alice", ALPHA_REVIEWABLE), ("charlie", {"charlie_api"})],
)
def test_it_scopes_the_filtered_export(world: World, fmt: str, role: str, expected: set[str]) -> None:
    response = client_for(world, role).get(reverse("admin:conversations_conversation_export", args=[fmt]))
    assert response.status_code == 200
    if fmt == "jsonl":
        assert exported(world, response) == expected
    else:
        rows = b"".join(response.streaming_content).decode().splitlines()[1:]
        ids = {int(row.split(",")[0]) for row in rows}
        assert ids == {world.conversations[name].pk for name in expected}


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_it_refuses_the_export_to_a_member_and_to_anonymous(world: World, fmt: str) -> None:
    url = reverse("admin:conversations_conversation_export", args=[fmt])
    assert client_for(world, "bob").get(url).status_code == 403
    assert is_login_redirect(client_for(world, "anonymous").get(url))


@pytest.mark.parametrize("role, status", [("root", 200), ("alice", 200), ("charlie", 200)])
def test_it_exports_only_reviewable_rows_of_a_selection(world: World, role: str, status: int) -> None:
    """Posting team A's ids to the export action from team B's admin exports nothing of them."""
    ids = [conv.pk for conv in world.conversations.values()]
    response = client_for(world, role).post(
        reverse("admin:conversations_conversation_changelist"),
        {"action": "export_jsonl", "_selected_action": ids, "index": 0},
    )
    assert response.status_code == status
    expected = {"root": ALPHA | {"charlie_api"}, "alice": ALPHA_REVIEWABLE, "charlie": {"charlie_api"}}[role]
    assert exported(world, response) == expected


@pytest.mark.parametrize(
    "role, status, sees_alpha",
    [("root", 200, True), ("alice", 200, True), ("bob", 404, False), ("charlie", 200, False)],
)
def test_it_scopes_the_usage_page_and_its_csv(world: World, role: str, status: int, sees_alpha: bool) -> None:
    client = client_for(world, role)
    page = client.get(reverse("review:usage"))
    csv = client.get(reverse("review:usage_csv"))
    assert page.status_code == csv.status_code == status
    if status == 200:
        body = csv.content.decode()
        assert ("alpha" in body) == sees_alpha
        assert ("alpha" in page.content.decode().split('id="usage-table"')[1]) == sees_alpha


def test_it_sends_anonymous_usage_requests_to_the_login(world: World) -> None:
    assert is_login_redirect(client_for(world, "anonymous").get(reverse("review:usage")))
    assert is_login_redirect(client_for(world, "anonymous").get(reverse("review:usage_csv")))


@pytest.mark.parametrize(
    "role, status, expected_teams",
    [
        ("root", 200, {"alpha", "beta"}),
        ("alice", 200, {"alpha"}),
        ("bob", 403, None),
        ("charlie", 200, {"beta"}),
    ],
)
def test_it_scopes_the_membership_list(world: World, role: str, status: int, expected_teams) -> None:
    response = client_for(world, role).get(reverse("admin:conversations_membership_changelist"))
    assert response.status_code == status
    if expected_teams is not None:
        shown = {m.team.name for m in response.context["cl"].result_list}
        assert shown == expected_teams


@pytest.mark.parametrize(
    "role, status, count",
    [("root", 200, 2), ("alice", 200, 1), ("bob", 403, None), ("charlie", 200, 1)],
)
def test_it_scopes_the_team_list(world: World, role: str, status: int, count) -> None:
    response = client_for(world, role).get(reverse("admin:conversations_team_changelist"))
    assert response.status_code == status
    if count is not None:
        assert len(response.context["cl"].result_list) == count


@pytest.mark.parametrize("role, status", [("root", 200), ("alice", 200), ("bob", 403), ("charlie", 200)])
def test_it_shows_the_audit_trail_to_reviewers_each_in_their_scope(
    world: World, role: str, status: int
) -> None:
    # Superusers see every entry, a team's admins their teams' (tests/review/test_audit_trail.py).
    assert client_for(world, role).get(reverse("admin:review_auditentry_changelist")).status_code == status


def test_it_hides_the_review_models_from_a_member_s_admin_index(world: World) -> None:
    response = client_for(world, "bob").get(reverse("admin:index"))
    assert response.status_code == 200
    assert response.context["app_list"] == []


def test_it_shows_private_chats_to_team_admins_only_when_the_team_allows(world: World) -> None:
    url = reverse("admin:conversations_conversation_change", args=[world.conversations["bob_private"].pk])
    alice = client_for(world, "alice")
    assert alice.get(url).status_code == 404
    services.set_policy(world.alpha, reviewers_see_private=True, by=world.root)
    assert alice.get(url).status_code == 200
    assert client_for(world, "charlie").get(url).status_code == 404


def test_it_shows_deleted_conversations_to_reviewers_marked_deleted(world: World) -> None:
    deleted = world.conversations["bob_deleted"]
    alice = client_for(world, "alice")
    listing = alice.get(reverse("admin:conversations_conversation_changelist"), {"deleted": "yes"})
    assert listed(world, listing) == {"bob_deleted"}
    assert "review-deleted" in listing.content.decode()
    transcript = alice.get(reverse("admin:conversations_conversation_change", args=[deleted.pk]))
    assert "Deleted by its owner" in transcript.content.decode()


@pytest.mark.parametrize("role, status", [("alice", 200), ("bob", 200), ("charlie", 404), ("root", 404)])
def test_it_shows_the_team_policy_to_its_members(world: World, role: str, status: int) -> None:
    response = client_for(world, role).get(reverse("review:team_policy", args=[world.alpha.pk]))
    assert response.status_code == status
    if status == 200:
        assert "private browser conversations" in response.content.decode()
        assert "only the site's superusers" in response.content.decode()


def test_it_sends_anonymous_policy_requests_to_a_login(world: World) -> None:
    response = client_for(world, "anonymous").get(reverse("review:team_policy", args=[world.alpha.pk]))
    assert response.status_code == 302


@pytest.mark.parametrize(
    "url_name, args",
    [
        ("admin:conversations_conversation_changelist", []),
        ("admin:conversations_conversation_change", ["bob_api"]),
        ("admin:conversations_conversation_export", ["jsonl"]),
        ("admin:conversations_membership_changelist", []),
        ("admin:conversations_membership_add", []),
        ("admin:conversations_team_changelist", []),
        ("admin:conversations_team_change", ["alpha"]),
        ("admin:review_auditentry_changelist", []),
        ("review:usage", []),
        ("review:usage_csv", []),
    ],
)
def test_it_sends_anonymous_reviewers_to_the_login_everywhere(world: World, url_name: str, args) -> None:
    ids = {"bob_api": world.conversations["bob_api"].pk, "alpha": world.alpha.pk}
    url = reverse(url_name, args=[ids.get(a, a) for a in args])
    assert is_login_redirect(client_for(world, "anonymous").get(url))


@pytest.mark.parametrize("role", ["bob", "anonymous"])
def test_it_refuses_the_selection_export_to_a_member_and_to_anonymous(world: World, role: str) -> None:
    client = client_for(world, role)
    ids = [conv.pk for conv in world.conversations.values()]
    response = client.post(
        reverse("admin:conversations_conversation_changelist"),
        {"action": "export_jsonl", "_selected_action": ids, "index": 0},
    )
    assert response.status_code == 403 if role == "bob" else is_login_redirect(response)
    assert not AuditEntry.objects.exclude(action="key_created").exists()  # the world's keys are audited
