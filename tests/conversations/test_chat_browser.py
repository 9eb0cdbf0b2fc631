"""The browser chat in real headless Chromium (Debian's, driven by Playwright through its executable
path) against a live Daphne serving the REAL default model (one slot, one thread).

The tests run in order on one server and share alice's conversation (a test run without the ones
before it, alone with ``-k`` or after one failed, makes its own: ``alice_chat``): she logs in, sends
a message and watches the answer grow; stops a long answer and finds it saved as stopped after a
reload; regenerates; shares the conversation, and bob watches her next answer stream live; charlie,
an outsider, gets 404 on the page and a refused websocket; a message full of XSS payloads triggers
nothing. The run writes screenshots to .data/screenshots/ (ignored by git): the chat mid-stream
and the conversation list.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from functools import partial

import pytest

from tests.browser import log_in as browser_log_in
from tests.fixtures_model import default_model_path
from tests.live_server import ROOT, LiveServer

pytestmark = [pytest.mark.browser, pytest.mark.model, pytest.mark.slow]

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
except ImportError:  # the browser fixture says what is missing
    PlaywrightTimeout = TimeoutError

PASSWORD = "a-long-test-password-4"
SCREENSHOTS = ROOT / ".data" / "screenshots"

SETUP = f"""
import django
django.setup()
from django.contrib.auth import get_user_model
from conversations import actions
from conversations.models import Team
User = get_user_model()
for name in ("alice", "bob", "charlie"):
    user = User.objects.get(username=name)
    user.set_password({PASSWORD!r})
    user.save()
actions.default_team(User.objects.get(username="charlie"))  # charlie: a team of his own
alice, bob = User.objects.get(username="alice"), User.objects.get(username="bob")
alpha = Team.objects.get(name="alpha")
for owner, title, visibility in [(alice, "Release notes draft", "private"),
                                 (bob, "Trip planning for the offsite", "team")]:
    chat = actions.start_conversation(owner, alpha, title=title, visibility=visibility)
    actions.add_user_message(chat, "Notes about " + title.lower(), author=owner)
"""

XSS = (
    '<img src=x onerror="window.__xss=1"> <script>window.__xss=2</script> '
    "[click](javascript:window.__xss=3) "
    '<div hx-get="/settings/keys" hx-trigger="load" hx-swap="outerHTML">htmx</div> '
    "![leak](http://127.0.0.1:9/leak.png)"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(
        tmp_path_factory.mktemp("chat-browser"),
        {
            "CHAT_MODEL_PATH": str(default_model_path()),
            "CHAT_SLOTS": "1",
            "CHAT_QUEUE_MAX": "4",
            # The first answer's length (the site's default reply length): at the site's 512 the
            # model wrote all 512, some 10 CPU-s of a busy run, where ~100 show it stream.
            "CHAT_DEFAULT_MAX_TOKENS": "128",
            # The site's own settings, its password hasher included (tests/live_settings.py).
            "DJANGO_SETTINGS_MODULE": "chatsite.settings",
        },
    ).start()
    try:
        live.run_python(SETUP)
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def state() -> dict:
    """What the ordered tests hand on: alice's page and her conversation's URL."""
    return {}


@pytest.fixture
def alice_chat(browser, server, state):
    """alice's page on her conversation: the one the first test made, or, when it did not run
    (``-k``, another order) or failed before making it, a new one with its first answer complete."""
    if "page" not in state:
        page = log_in(browser, server, "alice")
        start_conversation(page, "Write a short poem about the sea.")
        wait_last_answer(page, "complete")
        state["url"], state["page"] = page.url, page
    return state["page"]


log_in = partial(browser_log_in, password=PASSWORD, timeout_ms=60_000)  # (the real model answers)


def open_socket(page) -> None:
    page.wait_for_selector("body.ws-open")


def start_conversation(page, first: str) -> None:
    """Start a conversation from the sidebar: it is made with its first message (nothing is saved
    before), and the page moves to it with its socket open."""
    page.click("text=+ New conversation")
    page.wait_for_url(re.compile(r"/c/new$"))
    page.fill("#composer-text", first)
    page.press("#composer-text", "Enter")
    page.wait_for_url(re.compile(r"/c/\d+/$"))
    open_socket(page)


def send(page, text: str) -> None:
    """Type and press Enter; return once the page shows the new user message."""
    count = page.locator("#messages .msg-user").count()
    page.fill("#composer-text", text)
    page.press("#composer-text", "Enter")
    try:
        page.wait_for_function(
            "(n) => document.querySelectorAll('#messages .msg-user').length > n", arg=count, timeout=30_000
        )
    except PlaywrightTimeout:
        composer = page.input_value("#composer-text")
        error = page.locator("#chat-error").inner_text()
        raise AssertionError(f"not sent: composer {composer!r}, error {error!r}, {page.url}") from None


# Greedy, this prompt runs the default model to max_tokens (2000 tokens: seconds of text), so that
# Stop lands while the reply streams, however fast the machine. (Counting to 1000 is not such a
# prompt: greedy, the model writes 11 tokens and ends.)
LONG_PROMPT = "Write a very long story about a lighthouse keeper and his dog."


def set_max_tokens(page, n: int, temperature: float | None = None) -> None:
    page.click(".chat-tools summary")
    page.fill("#id_max_tokens", str(n))
    if temperature is not None:
        page.fill("#id_temperature", str(temperature))
    page.click("text=Save settings")
    page.wait_for_selector("text=Settings saved.")
    open_socket(page)


def last_answer(page):
    return page.locator("#messages .msg-assistant").last


def last_id(page) -> int:
    """The id of the page's last message (0: none)."""
    return page.evaluate(
        "() => { const a = document.querySelector('#messages > article:last-child');"
        " return a ? Number(a.id.slice(2)) : 0; }"
    )


def wait_last_answer(page, status: str, after: int = 0) -> None:
    """Wait until the conversation's last answer, one newer than message ``after``, has ``status``
    (generous: the machine may be busy, 2 cores)."""
    page.wait_for_function(
        "([status, after]) => { const a = [...document.querySelectorAll('#messages .msg-assistant')].pop();"
        " return a && Number(a.id.slice(2)) > after && a.classList.contains('status-' + status); }",
        arg=[status, after],
        timeout=120_000,
    )


def watch_growth(page, *, until: str, samples: int = 1200) -> list[int]:
    """The lengths of the last answer's text, sampled every 50 ms until ``until`` matches it."""
    lengths: list[int] = []
    for _ in range(samples):
        answer = last_answer(page)
        if answer.count():
            lengths.append(len(answer.locator(".msg-body").inner_text()))
            if re.search(until, answer.get_attribute("class") or ""):
                break
        time.sleep(0.05)
    return lengths


def test_it_logs_in_and_streams_the_answer_token_by_token(browser, server, state) -> None:
    page = log_in(browser, server, "alice")
    start_conversation(page, "Write a short poem about the sea.")  # the reply starts at once
    state["url"], state["page"] = page.url, page
    before = 0
    page.wait_for_selector("#messages .msg-user >> text=Write a short poem about the sea.")
    page.wait_for_selector("#messages .msg-assistant")
    # Mid-stream: some text, not finished yet.
    page.wait_for_function(
        "() => { const a = [...document.querySelectorAll('#messages .msg-assistant')].pop();"
        " return a && a.querySelector('.msg-body').innerText.length > 15; }"
    )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "chat-mid-stream.png"), full_page=True)
    assert "status-streaming" in last_answer(page).get_attribute("class")  # still mid-stream
    lengths = watch_growth(page, until=r"status-complete")
    growing = sorted(set(lengths))
    assert len(growing) >= 3, f"the answer did not grow in steps: {lengths}"
    assert lengths == sorted(lengths)
    wait_last_answer(page, "complete", before)
    meta = last_answer(page).locator(".msg-meta").inner_text()
    assert re.search(r"\d+ tokens · \d+\.\d s", meta), meta
    assert "SmolLM2" in last_answer(page).locator(".msg-who").inner_text()
    # The title came from the first message, in the page and in the sidebar.
    assert "Write a short poem about the sea." in page.locator("#conv-title").inner_text()
    assert "Write a short poem" in page.locator("#conversation-list .current").inner_text()  # live


def test_it_stops_and_keeps_the_partial_answer_after_a_reload(alice_chat) -> None:
    page = alice_chat
    set_max_tokens(page, 2000, temperature=0)
    before = last_id(page)
    send(page, LONG_PROMPT)
    page.wait_for_function(
        "() => { const a = [...document.querySelectorAll('#messages .msg-assistant')].pop();"
        " return a && a.classList.contains('status-streaming')"
        " && a.querySelector('.msg-body').innerText.length > 10; }"
    )
    page.keyboard.press("Escape")
    wait_last_answer(page, "stopped", before)
    shown = last_answer(page).locator(".msg-body").inner_text()
    page.reload()
    open_socket(page)
    answer = last_answer(page)
    assert "status-stopped" in answer.get_attribute("class")
    assert answer.locator(".badge").inner_text().lower() == "stopped"
    saved = answer.locator(".msg-body").inner_text()
    assert saved and saved.startswith(shown[: max(1, len(shown) - 20)].strip()[:10])
    tokens = int(answer.locator(".msg-meta").inner_text().split()[0])
    assert 1 <= tokens < 2000


def test_it_regenerates_the_last_answer(alice_chat) -> None:
    page = alice_chat
    set_max_tokens(page, 40)
    answers = page.locator("#messages .msg-assistant")
    count = answers.count()
    old_id = last_answer(page).get_attribute("id")
    before = last_id(page)
    last_answer(page).locator("button.regenerate").click()
    page.wait_for_selector(f"#{old_id}", state="detached")
    wait_last_answer(page, "complete", before)
    # In order: the first answer and the regenerated one; the stopped one is gone, none added.
    assert answers.count() == count
    assert last_answer(page).get_attribute("id") != old_id


def test_it_streams_live_to_a_teammate_watching_a_shared_conversation(
    browser, server, state, alice_chat
) -> None:
    page = alice_chat
    page.click(".chat-tools summary")
    page.select_option("#visibility-select", "team")
    page.click("text=Save sharing")
    page.wait_for_selector("#conv-title >> text=shared with alpha")
    open_socket(page)
    set_max_tokens(page, 120)
    bob = log_in(browser, server, "bob")
    bob.goto(state["url"])
    open_socket(bob)
    before = bob.locator("#messages .msg-assistant").count()
    moon = last_id(page)
    send(page, "Tell me about the moon.")
    bob.wait_for_selector("#messages .msg-user >> text=Tell me about the moon.")
    bob.wait_for_function(f"() => document.querySelectorAll('#messages .msg-assistant').length > {before}")
    lengths = watch_growth(bob, until=r"status-complete")
    assert len(set(lengths)) >= 3, f"bob did not see the answer grow: {lengths}"
    wait_last_answer(bob, "complete", moon)
    assert "alice" in bob.locator("#messages .msg-user").last.locator(".msg-who").inner_text()
    bob.context.close()
    # alice's list: her conversations and the team's shared ones, newest first.
    page.goto(server.url + "/")
    titles = page.locator("#conversation-list .conversation-title").all_inner_texts()
    assert titles[0].startswith("Write a short poem") and "Trip planning for the offsite" in titles
    assert "shared by bob" in page.locator("#conversation-list").inner_text()
    page.screenshot(path=str(SCREENSHOTS / "conversation-list.png"), full_page=True)
    page.fill(".search input", "offsite")  # htmx swaps the filtered list in as one types
    page.wait_for_function("() => document.querySelectorAll('#conversation-list a').length === 1")
    assert "Trip planning" in page.locator("#conversation-list").inner_text()
    page.goto(state["url"])
    open_socket(page)


def test_it_gives_an_outsider_404_and_refuses_his_websocket(browser, server, state, alice_chat) -> None:
    charlie = log_in(browser, server, "charlie")
    response = charlie.goto(state["url"])
    assert response.status == 404
    conversation_id = re.search(r"/c/(\d+)/", state["url"]).group(1)
    outcome = charlie.evaluate(
        """(path) => new Promise((resolve) => {
            const ws = new WebSocket(`ws://${location.host}${path}`);
            ws.onopen = () => resolve("open");
            ws.onclose = (event) => resolve(`closed ${event.code}`);
        })""",
        f"/ws/c/{conversation_id}/",
    )
    assert outcome.startswith("closed"), outcome
    charlie.context.close()


def test_it_sends_on_enter_breaks_lines_on_shift_enter_and_copies_code(alice_chat) -> None:
    page = alice_chat
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    set_max_tokens(page, 8)
    count = page.locator("#messages .msg-user").count()
    page.fill("#composer-text", "Explain this:")
    page.press("#composer-text", "Shift+Enter")
    page.keyboard.type("```python")
    page.press("#composer-text", "Shift+Enter")
    page.keyboard.type("print('copied')")
    page.press("#composer-text", "Shift+Enter")
    page.keyboard.type("```")
    assert page.locator("#messages .msg-user").count() == count  # Shift+Enter did not send
    before = last_id(page)
    page.press("#composer-text", "Enter")
    page.wait_for_function(f"() => document.querySelectorAll('#messages .msg-user').length > {count}")
    assert page.input_value("#composer-text") == ""
    code = page.locator("#messages .msg-user").last.locator("pre")
    code.locator(".copy-code").click()
    page.wait_for_selector("#messages .msg-user >> nth=-1 >> text=Copied")
    assert page.evaluate("() => navigator.clipboard.readText()") == "print('copied')\n"
    wait_last_answer(page, "complete", before)


def test_it_edits_and_resends_a_message(alice_chat) -> None:
    page = alice_chat
    set_max_tokens(page, 8)
    users = page.locator("#messages .msg-user")
    count, last = users.count(), users.last
    old_id = last.get_attribute("id")
    last.locator(".edit-toggle").click()
    form = last.locator(".edit-form")
    form.locator("textarea").fill("Print hello, edited.")
    before = last_id(page)
    form.locator("button[type=submit]").click()
    page.wait_for_selector(f"#{old_id}", state="detached")  # hidden (kept for reviewers)
    page.wait_for_selector("#messages .msg-user >> nth=-1 >> text=Print hello, edited.")
    wait_last_answer(page, "complete", before)
    assert users.count() == count


def test_it_shows_an_xss_payload_as_text_and_runs_nothing(alice_chat, state) -> None:
    page = alice_chat
    set_max_tokens(page, 8)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    before = last_id(page)
    send(page, XSS)
    wait_last_answer(page, "complete", before)
    page.wait_for_timeout(500)
    body = page.locator("#messages .msg-user").last.locator(".msg-body")
    assert "<img src=x" in body.inner_text()  # shown as text
    assert body.locator("img, script, [hx-get], [onerror]").count() == 0
    assert page.evaluate("() => window.__xss") is None
    assert dialogs == []
    assert not [url for url in requests if "leak.png" in url or "/settings/keys" in url]
    href = body.locator("a").all()
    assert all((a.get_attribute("href") or "").startswith("http") for a in href)
    # Phone width: no sideways scrolling, the composer still there.
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 391
    assert page.locator("#composer-text").is_visible()
    page.screenshot(path=str(SCREENSHOTS / "chat-phone.png"), full_page=False)
    page.context.close()
    state.clear()  # a test after this one makes a new page
