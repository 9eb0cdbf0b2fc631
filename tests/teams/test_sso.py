"""Single sign-on with OpenID Connect (issue 13, onboarding), against a real provider process
(tests/oidc_provider.py: discovery, JWKS with a real RSA key, an authorize form, a token endpoint
issuing RS256 id_tokens, userinfo). The whole code flow runs over real HTTP: the test plays the
browser with Django's client for the site and ``requests`` for the provider, and the site's backend
reaches the provider's token, JWKS and userinfo endpoints itself."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from django.contrib.auth import get_user_model
from django.test import Client

from conversations import actions
from conversations.models import Membership
from review.models import AuditEntry
from teams import oidc
from teams import services as team_services
from teams.models import SsoGrant, SsoIdentity
from tests.live_server import ROOT

PASSWORD = "a-long-sso-test-password-5"


@pytest.fixture
def sso(settings, oidc_provider):
    settings.CHAT_OIDC = True
    settings.CHAT_OIDC_ISSUER = oidc_provider.issuer
    settings.OIDC_RP_CLIENT_ID = oidc_provider.client_id
    settings.OIDC_RP_CLIENT_SECRET = oidc_provider.client_secret
    settings.CHAT_OIDC_TEAMS_CLAIM = "groups"
    oidc.forget_discovery()
    yield oidc_provider
    oidc.forget_discovery()


@pytest.fixture
def beta(charlie):
    return actions.create_team("beta", admin=charlie)


def start(client: Client, provider) -> str:
    """The site's redirect to the provider's authorize endpoint."""
    response = client.get("/oidc/authenticate/")
    assert response.status_code == 302, response.content[:500]
    assert response["Location"].startswith(provider.issuer + "/authorize?")
    return response["Location"]


def provider_says_yes(provider, authorize_url: str, username: str = "erin", groups: str = "") -> str:
    """What a person does on the provider's page: the form posted, the redirect back (not followed)."""
    page = requests.get(authorize_url, timeout=10)
    assert page.status_code == 200 and "Stub provider" in page.text
    params = {k: v[0] for k, v in parse_qs(urlsplit(authorize_url).query).items()}
    answer = requests.post(
        f"{provider.issuer}/authorize",
        data={**params, "username": username, "groups": groups},
        allow_redirects=False,
        timeout=10,
    )
    assert answer.status_code == 302
    return answer.headers["Location"]


def back_to_site(client: Client, callback_url: str):
    parts = urlsplit(callback_url)
    assert parts.path == "/oidc/callback/"
    return client.get(f"{parts.path}?{parts.query}")


def sign_in(client: Client, provider, username: str = "erin", groups: str = ""):
    return back_to_site(client, provider_says_yes(provider, start(client, provider), username, groups))


def signed_in_as(client: Client):
    return client.get("/settings/keys").wsgi_request.user


def test_a_first_sign_in_makes_an_account_and_joins_the_claimed_teams(sso, alpha) -> None:
    client = Client()
    response = sign_in(client, sso)
    assert response.status_code == 302 and response["Location"] == "/"
    erin = signed_in_as(client)
    assert erin.get_username() == "erin" and erin.email == "erin@example.com"
    assert not erin.has_usable_password()
    identity = SsoIdentity.objects.get(user=erin)
    assert (identity.issuer, identity.subject) == (sso.issuer, "u-erin-1")
    membership = Membership.objects.get(team=alpha, user=erin)
    assert membership.role == "member" and SsoGrant.objects.filter(membership=membership).exists()
    joined = AuditEntry.objects.get(action=AuditEntry.Action.MEMBERSHIP)
    assert joined.detail == "added as member (single sign-on, claim 'groups')"
    login = AuditEntry.objects.get(action=AuditEntry.Action.LOGIN)
    assert login.actor == erin and login.detail == "/oidc/callback/"
    # A second sign-in finds the same account.
    again = Client()
    sign_in(again, sso)
    assert signed_in_as(again) == erin
    assert get_user_model().objects.filter(username__startswith="erin").count() == 1


def test_password_login_stays_the_default_beside_sso(sso, alice) -> None:
    page = Client().get("/accounts/login/").content.decode()
    assert 'id="id_password"' in page and "Log in with single sign-on" in page
    alice.set_password(PASSWORD)
    alice.save()
    client = Client()
    response = client.post("/accounts/login/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302 and signed_in_as(client) == alice


def test_without_an_issuer_sso_is_off(db) -> None:
    assert "single sign-on" not in Client().get("/accounts/login/").content.decode()
    assert Client().get("/oidc/authenticate/").status_code == 404
    assert Client().get("/oidc/callback/?code=x&state=y").status_code == 404


def test_accounts_are_matched_by_subject_never_by_name(sso, alice) -> None:
    """frank's provider says preferred_username "alice": he gets a new account, not alice's."""
    client = Client()
    sign_in(client, sso, "frank")
    frank = signed_in_as(client)
    assert frank != alice and frank.get_username() == "alice-2"
    assert SsoIdentity.objects.get(user=frank).subject == "u-frank-2"


def test_the_teams_claim_is_followed_for_the_memberships_sso_made_only(sso, alpha, beta, alice) -> None:
    gamma = actions.create_team("gamma", admin=alice)
    client = Client()
    sign_in(client, sso, groups="alpha,nonexistent")
    erin = signed_in_as(client)
    # An admin adds erin to gamma by hand; a later sign-in without gamma leaves that alone.
    from review import services as review_services

    review_services.add_member(gamma, erin, by=alice)
    sign_in(Client(), sso, groups="beta")
    teams = set(Membership.objects.filter(user=erin).values_list("team__name", flat=True))
    assert teams == {"beta", "gamma"}
    removed = AuditEntry.objects.filter(
        action=AuditEntry.Action.MEMBERSHIP, detail__startswith="removed"
    ).get()
    assert removed.object_repr == "erin in alpha"
    sign_in(Client(), sso, groups="-")  # the claim present and empty: leaves beta too
    assert set(Membership.objects.filter(user=erin).values_list("team__name", flat=True)) == {"gamma"}


def test_an_sso_member_removed_by_an_admin_comes_back_at_the_next_sign_in(sso, alpha, alice) -> None:
    """The claim is the provider's word: removing the membership here lasts until the next sign-in."""
    client = Client()
    sign_in(client, sso)
    erin = signed_in_as(client)
    Client().force_login(alice)
    from review import services as review_services

    review_services.remove_member(Membership.objects.get(team=alpha, user=erin), by=alice)
    sign_in(Client(), sso)
    assert Membership.objects.filter(team=alpha, user=erin).exists()


@pytest.mark.parametrize("fault", ["issuer", "audience", "key", "expired"])
def test_a_bad_id_token_signs_nobody_in(sso, alpha, fault: str) -> None:
    client = Client()
    url = provider_says_yes(sso, start(client, sso))
    requests.post(f"{sso.issuer}/test/fault/{fault}", timeout=10)
    response = back_to_site(client, url)
    assert response.status_code == 302 and response["Location"] == "/accounts/login/?sso=failed"
    assert not signed_in_as(client).is_authenticated
    assert not get_user_model().objects.filter(username="erin").exists()
    page = client.get(response["Location"]).content.decode()
    assert "Single sign-on did not sign you in" in page


def test_a_replayed_or_forged_callback_signs_nobody_in(sso, alpha) -> None:
    client = Client()
    url = provider_says_yes(sso, start(client, sso))
    assert back_to_site(client, url)["Location"] == "/"
    client.logout()
    replay = back_to_site(client, url)  # the same code and state again
    assert replay.status_code == 302 and replay["Location"] == "/accounts/login/?sso=failed"
    forged = Client().get("/oidc/callback/?code=abc&state=def")
    assert forged.status_code == 302 and forged["Location"] == "/accounts/login/?sso=failed"
    assert not signed_in_as(client).is_authenticated


def test_an_unreachable_provider_gets_a_clear_page(settings, db) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    settings.CHAT_OIDC = True
    settings.CHAT_OIDC_ISSUER = f"http://127.0.0.1:{port}"
    settings.OIDC_RP_CLIENT_ID, settings.OIDC_RP_CLIENT_SECRET = "x", "y"
    oidc.forget_discovery()
    response = Client().get("/oidc/authenticate/")
    assert response.status_code == 503 and "cannot be reached" in response.content.decode()


def test_a_deactivated_account_cannot_sign_in(sso, alpha) -> None:
    client = Client()
    sign_in(client, sso)
    erin = signed_in_as(client)
    erin.is_active = False
    erin.save()
    assert not signed_in_as(client).is_authenticated  # the session ends with it
    again = Client()
    assert sign_in(again, sso)["Location"] == "/accounts/login/?sso=failed"
    assert not signed_in_as(again).is_authenticated


def test_a_locked_out_address_cannot_sign_in_with_sso_either(sso, alpha, settings) -> None:
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT):
        client.post("/accounts/login/", {"username": "nobody", "password": "wrong"})
    response = sign_in(client, sso)
    assert response.status_code == 429 and "Retry-After" in response
    assert not signed_in_as(client).is_authenticated
    assert not get_user_model().objects.filter(username="erin").exists()


def test_an_invited_account_can_be_used_beside_sso(sso, alpha, alice) -> None:
    """The three ways coexist: an invite's account and an SSO account of the same person are two."""
    _, token = team_services.create_invite(alpha, by=alice)
    client = Client()
    body = {"username": "erin", "password1": PASSWORD, "password2": PASSWORD}
    assert client.post(team_services.invite_path(token), body).status_code == 302
    sso_client = Client()
    sign_in(sso_client, sso)
    assert signed_in_as(sso_client).get_username() == "erin-2"


@pytest.mark.slow  # a process each
@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CHAT_OIDC_ISSUER": "https://idp.example.com"}, "CHAT_OIDC_CLIENT_ID and CHAT_OIDC_CLIENT_SECRET"),
        (
            {
                "CHAT_OIDC_ISSUER": "http://idp.example.com",
                "CHAT_OIDC_CLIENT_ID": "a",
                "CHAT_OIDC_CLIENT_SECRET": "b",
            },
            "must be an https:// address",
        ),
        (
            {
                "CHAT_OIDC_ISSUER": "https://idp.example.com",
                "CHAT_OIDC_CLIENT_ID": "a",
                "CHAT_OIDC_CLIENT_SECRET": "b",
                "CHAT_OIDC_SIGN_ALGO": "HS256",
            },
            "CHAT_OIDC_SIGN_ALGO='HS256'",
        ),
    ],
)
def test_a_half_configured_sso_stops_the_process_at_start(
    tmp_path, env: dict[str, str], message: str
) -> None:
    child = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    child.update(DJANGO_SETTINGS_MODULE="chatsite.settings", CHAT_DATA_DIR=str(tmp_path), **env)
    done = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env=child,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0 and "ImproperlyConfigured" in done.stderr and message in done.stderr


def test_an_sso_account_is_not_offered_a_password_change(sso, alpha, alice) -> None:
    """It has no password to give as the old one; the menu leaves the link out (alice keeps hers)."""
    client = Client()
    sign_in(client, sso)
    assert 'href="/accounts/password_change/"' not in client.get("/settings/keys").content.decode()
    alice.set_password(PASSWORD)
    alice.save()
    local = Client()
    local.force_login(alice)
    assert 'href="/accounts/password_change/"' in local.get("/settings/keys").content.decode()
