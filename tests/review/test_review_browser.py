"""The review admin in a real browser (Debian's chromium through Playwright) against Daphne.

A team admin signs in, filters the list to API conversations, opens a teammate's transcript and
flags it; a superuser then sees both entries (the view and the flag) in the audit trail. The run
also writes a screenshot of the usage chart to .data/screenshots/usage.png (and of the transcript
and the audit trail beside it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.live_server import ROOT, LiveServer
from tests.tiny_gguf import write_tiny_llama

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PASSWORD = "a-long-test-password-7"
SCREENSHOT = ROOT / ".data" / "screenshots" / "usage.png"

# Run in the server's environment after its own set-up: passwords, a superuser, alice as alpha's
# admin (through the operator command), and two weeks of bob's browser chats for the chart.
SETUP = f"""
import django
django.setup()
from datetime import timedelta
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.utils import timezone
from conversations import actions
from conversations.models import Conversation, Message, Team
User = get_user_model()
for name in ("alice", "bob"):
    user = User.objects.get(username=name)
    user.set_password({PASSWORD!r})
    user.save()
User.objects.create_superuser("root", "root@example.com", {PASSWORD!r})
call_command("addmember", "alpha", "alice", "--admin")
alpha, bob = Team.objects.get(name="alpha"), User.objects.get(username="bob")
now = timezone.now()
for day in range(13, -1, -1):
    chat = actions.start_conversation(bob, alpha, title=f"notes {{day}}", visibility="team")
    actions.add_user_message(chat, f"Summarise day {{day}}")
    prompt = 40 + 7 * day
    reply = actions.start_assistant_messages(chat, 1, params={{"temperature": 0.3}}, prompt_tokens=prompt)[0]
    actions.finish_assistant_message(reply.pk, actions.Outcome(
        status="complete", content="A summary.", prompt_tokens=prompt,
        completion_tokens=20 + (day * 37) % 90, duration=1.0))
    Message.objects.filter(conversation=chat).update(created=now - timedelta(days=day))
    Conversation.objects.filter(pk=chat.pk).update(created=now - timedelta(days=day))
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("review-browser")
    model = write_tiny_llama(folder / "tiny.gguf", context_length=2048)
    live = LiveServer(
        folder / "data",
        {"CHAT_MODEL_PATH": str(model), "CHAT_SLOTS": "1", "CHAT_THREADS": "1", "CHAT_MAX_TOKENS_CAP": "8"},
    ).start()
    try:
        live.run_python(SETUP)
        # Real API calls through /v1, logged as bob's API conversations.
        for question in ("Name a colour", "Name a fruit"):
            body = {
                "model": "gpt-3.5-turbo",
                "messages": [{"role": "user", "content": question}],
                "user": "u-7",
            }
            status, _, answer = live.request("POST", "/v1/chat/completions", body, key="bob")
            assert status == 200, answer
        yield live
    finally:
        live.stop()


def sign_in(browser, server: LiveServer, username: str, next_path: str):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    csp_errors: list[str] = []
    page.on("console", lambda m: csp_errors.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(f"{server.url}/admin/login/?next={next_path}")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(lambda url: "/login/" not in url)
    assert page.url == server.url + next_path
    return page, csp_errors


def test_it_lets_a_team_admin_flag_an_api_conversation_and_a_superuser_see_the_audit(browser, server) -> None:
    page, csp_errors = sign_in(browser, server, "alice", "/admin/conversations/conversation/")

    # Filter to API conversations: the browser chats disappear.
    assert page.locator("#result_list").get_by_text("notes 3").count() == 1
    page.click('#changelist-filter a[href*="source__exact=api"]')
    page.wait_for_url("**source__exact=api**")
    assert page.locator("#result_list").get_by_text("notes 3").count() == 0
    assert page.locator("#result_list tbody tr").count() == 3  # bob's two calls and alice's readiness probe

    page.screenshot(path=str(SCREENSHOT.with_name("conversations.png")), full_page=True)

    # Open bob's transcript and flag it.
    page.locator("#result_list").get_by_role("link", name="Name a colour").click()
    page.wait_for_selector(".review-messages")
    assert page.locator(".review-request-user").inner_text() == "u-7"
    assert page.locator(".review-message.role-assistant").count() == 1
    page.fill("#flag-note", "checking what the model says about colours")
    page.get_by_role("button", name="Flag").click()
    page.wait_for_selector(".review-flagged")
    assert "checking what the model says about colours" in page.locator(".review-flagged").inner_text()
    assert csp_errors == []
    page.screenshot(path=str(SCREENSHOT.with_name("transcript.png")), full_page=True)
    page.context.close()

    # The superuser sees alice's view and flag in the audit trail.
    page, _ = sign_in(browser, server, "root", "/admin/review/auditentry/")
    rows = page.locator("#result_list tbody tr")
    texts = [rows.nth(i).inner_text() for i in range(rows.count())]
    assert any("alice" in t and "flag" in t and "Name a colour" in t for t in texts), texts
    assert any("alice" in t and "view" in t and "Name a colour" in t for t in texts), texts
    page.screenshot(path=str(SCREENSHOT.with_name("audit.png")), full_page=True)
    page.click('#changelist-filter a[href*="action__exact=flag"]')
    page.wait_for_url("**action__exact=flag**")
    assert page.locator("#result_list tbody tr").count() == 1

    # The export streams through Daphne, and round-trips against the server's database.
    export = page.request.get(
        f"{server.url}/admin/conversations/conversation/export/jsonl/?source__exact=api"
    )
    assert export.ok and export.headers["content-type"].startswith("application/x-ndjson")
    records = [json.loads(line) for line in export.text().splitlines()]
    assert len(records) == 3
    for record in records:
        rows = server.query(
            "SELECT role, content, name FROM conversations_message WHERE conversation_id = ? ORDER BY id",
            record["metadata"]["id"],
        )
        stored = [
            {"role": r["role"], "content": r["content"], **({"name": r["name"]} if r["name"] else {})}
            for r in rows
        ]
        assert record["messages"] == stored
    page.context.close()

    entries = server.query(
        "SELECT actor_name, action FROM review_auditentry WHERE action IN ('view', 'flag')"
    )
    # Two views: opening the transcript, and the transcript shown again after flagging.
    assert sorted((e["actor_name"], e["action"]) for e in entries) == [
        ("alice", "flag"),
        ("alice", "view"),
        ("alice", "view"),
    ]


def test_it_draws_the_usage_chart(browser, server) -> None:
    page, csp_errors = sign_in(browser, server, "root", "/review/usage/")
    chart = page.locator("figure.review-chart")
    assert page.locator("#usage-chart g.bar").count() == 14
    assert page.locator("#usage-table tbody tr").count() >= 14
    chart.screenshot(path=str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size > 5_000
    assert csp_errors == []
    page.context.close()
