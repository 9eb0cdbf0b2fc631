"""Onboarding in real headless Chromium (Debian's, through Playwright) against Daphne (issue 13).

alice, alpha's admin, opens the team page from the menu, makes an invite link and revokes another;
dora opens the link in her own browser, is refused a weak password, chooses a good one and lands
in the chat as a member of alpha; the used and the revoked links then say so. alice removes dora
on the team page after a confirmation. erin signs in through single sign-on with the stub OpenID
provider (tests/oidc_provider.py, its own process) and lands in alpha from the groups claim. The
run writes .data/screenshots/team.png, team-phone.png and invite.png, and runs axe-core on the
team page and the invite page when package.json pins it.

The tests run in order and hand on alice's page, the invite links and dora's membership; a test run
without the ones before it (alone with ``-k``, or after one failed) makes what it needs itself
(``alice_page``, ``invites``, ``dora_in_alpha``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from tests.live_server import ROOT, LiveServer
from tests.tiny_gguf import write_tiny_llama

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PASSWORD = "a-long-test-password-8"
SCREENSHOTS = ROOT / ".data" / "screenshots"
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
AXE_PINNED = "axe-core" in json.loads((ROOT / "package.json").read_text()).get("dependencies", {})

SETUP = f"""
import django
django.setup()
from django.contrib.auth import get_user_model
from conversations import actions
from conversations.models import Team
User = get_user_model()
alice = User.objects.get(username="alice")
alice.set_password({PASSWORD!r})
alice.save()
actions.create_api_key(User.objects.get(username="bob"), Team.objects.get(name="alpha"), "nightly report")
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, oidc_provider) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("onboarding-browser")
    model = write_tiny_llama(folder / "tiny.gguf", context_length=2048)
    live = LiveServer(
        folder / "data",
        {
            "CHAT_MODEL_PATH": str(model),
            "CHAT_SLOTS": "1",
            "CHAT_MAX_TOKENS_CAP": "8",
            "CHAT_OIDC_ISSUER": oidc_provider.issuer,
            "CHAT_OIDC_CLIENT_ID": oidc_provider.client_id,
            "CHAT_OIDC_CLIENT_SECRET": oidc_provider.client_secret,
            "CHAT_OIDC_TEAMS_CLAIM": "groups",
            "CHAT_OIDC_LABEL": "Example SSO",
        },
    ).start()
    try:
        live.run_python(SETUP)
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def state() -> dict:
    """What the ordered tests hand on: the invite link dora uses, alice's page."""
    return {}


def log_in_alice(browser, server: LiveServer):
    page = new_page(browser)
    page.goto(server.url + "/accounts/login/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(server.url + "/")
    return page


@pytest.fixture
def alice_page(browser, server, state):
    """alice's page on the team page: the first test's, or a new one."""
    if "alice" not in state:
        page = log_in_alice(browser, server)
        page.click("nav >> text=Team")
        page.wait_for_selector("h1:has-text('Team alpha')")
        state["alice"] = page
    return state["alice"]


@pytest.fixture
def invites(alice_page, state) -> dict:
    """An invite link for dora and a revoked one: the first test's, or new ones made alike."""
    if "link" not in state:
        revoked = invite_link(alice_page)
        alice_page.locator("table.invites button").first.click()
        alice_page.wait_for_selector("text=its link no longer works")
        state.update(link=invite_link(alice_page), revoked=revoked)
    return state


ADD_DORA = """
import django
django.setup()
from django.contrib.auth import get_user_model
from conversations import actions
from conversations.models import Team
actions.add_member(Team.objects.get(name="alpha"), get_user_model().objects.create_user("dora"))
"""


@pytest.fixture
def dora_in_alpha(server, state) -> None:
    """dora a member of alpha: through her invite in the second test, or added here."""
    if not state.get("dora"):
        server.run_python(ADD_DORA)
        state["dora"] = True


def new_page(browser):
    page = browser.new_context(viewport={"width": 1200, "height": 900}).new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []  # failed loads (the browser's own favicon request aside) and CSP reports
    page.on(
        "response",
        lambda r: (
            errors.append(f"{r.status} {r.url}") if r.status >= 400 and "favicon" not in r.url else None
        ),
    )
    page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
    page.errors = errors
    return page


def axe_violations(page) -> list[str]:
    """Serious and critical axe-core violations (run only once package.json pins axe-core)."""
    if not AXE_PINNED:
        return []
    assert AXE.exists(), f"{AXE} is missing: run scripts/setup.sh (npm ci)"
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.evaluate(AXE.read_text())  # evaluated by the harness: the page's CSP stays as it is
    result = page.evaluate("async () => (await axe.run(document)).violations")
    return [
        f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']][:3]}"
        for v in result
        if v["impact"] in ("serious", "critical")
    ]


def invite_link(page) -> str:
    page.click("text=Make an invite link")
    page.wait_for_selector("input.invite-link")
    return page.locator("input.invite-link").first.input_value()


def test_a_team_admin_invites_from_the_team_page(browser, server, state) -> None:
    page = log_in_alice(browser, server)
    page.click("nav >> text=Team")
    page.wait_for_selector("h1:has-text('Team alpha')")
    members = page.locator("table.members tbody tr")
    assert members.count() == 2 and "bob" in members.nth(1).inner_text()
    assert "nightly report" in page.inner_text("body")

    # One invite to revoke, one for dora.
    revoked = invite_link(page)
    page.locator("table.invites button").first.click()
    page.wait_for_selector("text=its link no longer works")
    link = invite_link(page)
    assert re.fullmatch(re.escape(server.url) + r"/invite/[A-Za-z0-9_-]{43}/", link)
    assert page.locator("table.invites tbody tr[data-invite]").count() == 1
    page.screenshot(path=str(SCREENSHOTS / "team.png"), full_page=True)
    assert axe_violations(page) == []
    page.reload()
    assert page.locator("input.invite-link").count() == 0  # shown once
    # On a phone the page fits the screen: wide tables scroll inside their card.
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    page.screenshot(path=str(SCREENSHOTS / "team-phone.png"), full_page=True)
    page.set_viewport_size({"width": 1200, "height": 900})
    assert page.errors == []
    state.update(link=link, revoked=revoked, alice=page)


def test_the_invitee_chooses_a_username_and_password_and_joins(browser, server, invites, state) -> None:
    page = new_page(browser)
    page.goto(invites["link"])
    assert page.inner_text("h1") == "Join alpha"
    page.fill("#id_username", "dora")
    page.fill("#id_password1", "password1")
    page.fill("#id_password2", "password1")
    page.click("text=Create my account and join")
    page.wait_for_selector("text=too common")
    page.screenshot(path=str(SCREENSHOTS / "invite.png"), full_page=True)
    assert axe_violations(page) == []
    page.fill("#id_password1", PASSWORD)
    page.fill("#id_password2", PASSWORD)
    page.click("text=Create my account and join")
    page.wait_for_url(server.url + "/")
    assert "Log out dora" in page.inner_text("header")
    assert "you joined alpha as member" in page.inner_text("body")
    assert "alpha" in page.inner_text(".sidebar")
    state["dora"] = True

    # The link is spent; the revoked one says so too, to anyone.
    stranger = new_page(browser)
    stranger.goto(invites["link"])
    assert stranger.inner_text("h1") == "This invite was already used"
    stranger.goto(invites["revoked"])
    assert stranger.inner_text("h1") == "This invite was revoked"


def test_the_admin_removes_the_new_member_after_a_confirmation(alice_page, dora_in_alpha) -> None:
    page = alice_page
    page.reload()
    row = page.locator("tr[data-member=dora]")
    assert "member" in row.inner_text()
    row.locator("text=Remove…").click()
    page.wait_for_selector("h1:has-text('Remove dora from alpha?')")
    page.click("button:has-text('Remove dora')")
    page.wait_for_selector("text=Removed dora from alpha")
    assert page.locator("tr[data-member=dora]").count() == 0


def test_single_sign_on_through_the_stub_provider(browser, server, oidc_provider) -> None:
    page = new_page(browser)
    page.goto(server.url + "/accounts/login/")
    assert page.locator("#id_password").count() == 1  # password login stays
    page.click("text=Log in with Example SSO")
    page.wait_for_url(oidc_provider.issuer + "/authorize?**")
    page.fill("#username", "erin")
    page.fill("#groups", "alpha")
    page.click("#sign-in")
    page.wait_for_url(server.url + "/")
    assert "Log out erin" in page.inner_text("header")
    assert "alpha" in page.inner_text(".sidebar")
