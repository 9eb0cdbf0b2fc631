"""Issue 13's bugs, each in real headless Chromium against a live Daphne: typed text is never lost
(a message sent while an answer is written is queued), the keys page, the usage totals, the overload
wording, Stop only when something runs, a message that can never fit, a conversation made with its
first message, the model recorded, the connection's state across an offline/online cycle, the
delete page's retention promise, the live sidebar and tab title (two browsers).

The model is the tiny one at a fixed pace (tests/paced_model.py): these tests check the page, not
the model's words, and need replies that are still running while they act. One slot and no queue:
a second reply at the same time is refused as busy (the overload test relies on it), so each test
lets its replies end.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator

import pytest

from tests.conversations.test_chat_browser import (
    LONG_PROMPT,
    PASSWORD,
    SCREENSHOTS,
    SETUP,
    last_answer,
    last_id,
    log_in,
    open_socket,
    send,
    set_max_tokens,
    wait_last_answer,
)
from tests.live_server import LiveServer, start_with_script
from tests.paced_model import paced_env, write_paced_model

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SETUP_MORE = f"""
from django.contrib.auth import get_user_model
User = get_user_model()
User.objects.create_superuser("root", password={PASSWORD!r})
"""


def django(server: LiveServer, code: str) -> str:
    """Run ``code`` in a Django process on the server's database; its stdout."""
    return server.run_python("import django\ndjango.setup()\n" + code)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("chat-ux")
    model = write_paced_model(root / "model")
    # A faster pace than the other tests': most replies here only have to end, and the tests wait
    # for them, so they are 40 tokens at most (the site's default reply length: the tiny model's
    # own end of text is often hundreds of tokens away, each a frame the page renders); the long
    # ones (max tokens 2000, 16 s) are stopped by the tests, which act within seconds of their start.
    env = {
        **paced_env(model, pace_ms=8),
        "CHAT_SLOTS": "1",
        "CHAT_QUEUE_MAX": "0",
        "CHAT_DEFAULT_MAX_TOKENS": "40",
    }
    live = start_with_script(LiveServer(root / "site", env), SETUP + SETUP_MORE)
    try:
        yield live
    finally:
        live.stop()


def new_conversation(page, first: str = "Hello there", max_tokens: int | None = None) -> int:
    """Start a conversation from the sidebar with its first message; its id (the reply has ended)."""
    page.click("text=+ New conversation")
    page.wait_for_url(re.compile(r"/c/(\d+|new)/?$"))
    if "/c/new" in page.url:
        page.fill("#composer-text", first)
        page.press("#composer-text", "Enter")
        page.wait_for_url(re.compile(r"/c/\d+/$"))
        open_socket(page)
    else:
        open_socket(page)
        send(page, first)
    wait_last_answer(page, "complete")
    if max_tokens is not None:
        set_max_tokens(page, max_tokens, temperature=0)
    return int(re.search(r"/c/(\d+)/", page.url).group(1))


def start_long_reply(page) -> int:
    """Send the long prompt (max tokens set high by the caller) and wait until its answer streams."""
    before = last_id(page)
    send(page, LONG_PROMPT)
    page.wait_for_function(
        "(after) => { const a = [...document.querySelectorAll('#messages .msg-assistant')].pop();"
        " return a && Number(a.id.slice(2)) > after && a.classList.contains('status-streaming'); }",
        arg=before,
    )
    return before


def stop_and_wait(page, after: int) -> None:
    page.click("#stop-button")
    wait_last_answer(page, "stopped", after)


def raw_frame(page, conversation_id: int, frame: dict) -> str:
    """Send one frame on a second socket of the page's origin; the server's answer to it (the
    frame with the error box: every action's answer has one, cleared or not; the conversation's
    events, such as a streaming answer's deltas, come on the socket too)."""
    return page.evaluate(
        """([path, frame]) => new Promise((resolve, reject) => {
            const ws = new WebSocket(`ws://${location.host}${path}`);
            let opened = false;
            ws.onmessage = (event) => {
                if (!opened) { opened = true; ws.send(frame); return; }  // the first is the refresh
                if (!event.data.includes('id="chat-error"')) return;
                resolve(event.data);
                ws.close();
            };
            ws.onclose = (event) => reject(new Error(`closed ${event.code}`));
        })""",
        [f"/ws/c/{conversation_id}/", json.dumps(frame)],
    )


# --- 1. Never lose typed text ---------------------------------------------------------------------


def test_a_message_sent_while_an_answer_is_written_is_queued_and_sent_when_it_ends(browser, server) -> None:
    page = log_in(browser, server, "alice")
    conversation = new_conversation(page, max_tokens=2000)
    after = start_long_reply(page)
    count = page.locator("#messages .msg-user").count()
    page.fill("#composer-text", "What happens next?")
    page.press("#composer-text", "Enter")
    page.wait_for_selector("#composer-queued:not([hidden])")
    assert "queued" in page.locator("#composer-queued").inner_text().lower()
    assert page.input_value("#composer-text") == "What happens next?"  # still in the box
    assert page.locator("#messages .msg-user").count() == count  # not sent yet
    assert page.locator("#chat-error").is_hidden()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "chat-queued.png"))
    # The answer ends (stopped here): the queued message goes, and gets its own answer.
    stop_and_wait(page, after)
    page.wait_for_selector("#messages .msg-user >> nth=-1 >> text=What happens next?")
    queued_id = int(page.locator("#messages .msg-user").last.get_attribute("id")[2:])
    assert page.input_value("#composer-text") == ""
    assert page.locator("#composer-queued").is_hidden()
    page.wait_for_function(
        "() => { const a = [...document.querySelectorAll('#messages .msg-assistant')].pop();"
        " return a && a.classList.contains('status-streaming'); }"
    )
    # A send that reaches the server while a reply runs (another page's, say) comes back to the box.
    reply = raw_frame(page, conversation, {"action": "send", "text": "sent from elsewhere"})
    assert "still in the box" in reply and 'id="composer-text"' in reply and "sent from elsewhere" in reply
    stop_and_wait(page, queued_id)
    page.context.close()


def test_an_error_shows_next_to_the_box_and_keeps_the_text(browser, server) -> None:
    page = log_in(browser, server, "alice")
    new_conversation(page)
    # Some long earlier messages: the composer is at the bottom of a scrolled page.
    page.set_viewport_size({"width": 1200, "height": 500})
    page.evaluate("() => document.getElementById('composer-text').removeAttribute('maxlength')")
    too_long = "word " * 7000  # 35,000 characters: the server refuses it
    page.fill("#composer-text", too_long)
    page.press("#composer-text", "Enter")
    page.wait_for_selector("#chat-error:not([hidden])")
    error = page.locator("#chat-error")
    assert "too long" in error.inner_text()
    assert page.input_value("#composer-text") == too_long  # not lost
    box, text = error.bounding_box(), page.locator("#composer-text").bounding_box()
    height = page.viewport_size["height"]
    assert 0 <= box["y"] and box["y"] + box["height"] <= height, "the error is off-screen"
    assert abs(text["y"] - (box["y"] + box["height"])) < 80, "the error is not next to the box"
    page.context.close()


# --- 2. API keys ------------------------------------------------------------------------------------


def create_key(page, name: str) -> str:
    page.fill("#key-name", name)
    page.click("text=Create key")
    page.wait_for_selector("#new-key")
    return page.locator("#new-key").inner_text().strip()


def test_the_keys_page_shows_a_new_key_once_with_copy_and_a_working_sample_call(browser, server) -> None:
    page = log_in(browser, server, "alice")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.goto(server.url + "/settings/keys")
    rows = page.locator("table.keys tbody tr")
    before = rows.count()
    key = create_key(page, "nightly report")
    assert key.startswith("csk-")
    # A reload neither makes a second key nor shows this one again.
    page.reload()
    assert page.locator("#new-key").count() == 0 and key not in page.content()
    assert rows.count() == before + 1
    # Copy the key; the sample call holds it and works as it is.
    second = create_key(page, "nightly report")
    page.click("text=Copy the key")
    page.wait_for_function("(key) => navigator.clipboard.readText().then((t) => t === key)", arg=second)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "api-key-new.png"), full_page=True)
    sample = page.locator("#new-key-curl").inner_text()
    assert second in sample and sample.startswith("curl ")
    page.click("text=Copy the command")
    page.wait_for_function("(s) => navigator.clipboard.readText().then((t) => t === s)", arg=sample)
    done = subprocess.run(["bash", "-c", sample], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["object"] == "chat.completion" and answer["choices"][0]["message"]["role"] == "assistant"
    # The two keys of the same name are told apart: prefix, creation time, last use.
    page.reload()
    same = page.locator("table.keys tbody tr", has_text="nightly report")
    assert same.count() == 2
    first_row, second_row = (same.nth(i).locator("td").all_inner_texts() for i in range(2))
    assert first_row[1] != second_row[1]  # prefixes
    assert second.split("-")[1] in first_row[1]  # newest first: the second key, used once
    assert first_row[3] and second_row[3]  # created
    assert first_row[4] != "never" and second_row[4] == "never"  # last used
    # Revoke asks first; Cancel keeps the key.
    same.nth(1).locator("text=Revoke").click()
    page.wait_for_selector("h1 >> text=Revoke the key")
    assert second_row[1].rstrip("…") in page.locator("main").inner_text()
    page.click("text=Cancel")
    assert "revoked" not in same.nth(1).inner_text()
    same.nth(1).locator("text=Revoke").click()
    page.click("button >> text=Revoke")
    page.wait_for_selector("text=Revoked the key")
    assert same.nth(1).locator("td").nth(5).inner_text() == "revoked"
    assert "revoked" not in same.nth(0).inner_text()
    page.context.close()


# --- 3. Usage totals --------------------------------------------------------------------------------


def test_the_usage_totals_row_has_its_total_and_lines_up_with_the_columns(browser, server) -> None:
    page = log_in(browser, server, "root")  # the server's readiness call used tokens already
    page.goto(server.url + "/review/usage/")
    table = page.locator("#usage-table")
    foot = table.locator("tfoot tr")
    cells = foot.locator("th, td")
    texts = [t.strip() for t in cells.all_inner_texts()]
    assert texts[0] == "Total"
    requests, prompt, completion, total = (int(t) for t in texts[1:5])
    assert total == prompt + completion > 0 and requests > 0
    # Each figure's right edge is its column's: the same as the rows' figures above it.
    edges = page.evaluate(
        """() => {
            const right = (cell) => { const r = document.createRange(); r.selectNodeContents(cell);
                                      return r.getBoundingClientRect().right; };
            const body = [...document.querySelectorAll('#usage-table tbody tr:first-child td')].slice(5);
            const foot = [...document.querySelectorAll('#usage-table tfoot tr > *')].slice(1);
            return body.map((cell, i) => [right(cell), right(foot[i])]);
        }"""
    )
    assert len(edges) == 4
    for row, total_row in edges:
        assert abs(row - total_row) < 4, edges  # (the admin pads a footer cell 2px less)
    page.context.close()


# --- 4, 5. Overload wording; Stop only when something runs -----------------------------------------


def test_stop_is_disabled_when_nothing_runs_and_esc_sends_nothing(browser, server) -> None:
    page = log_in(browser, server, "alice")
    conversation = new_conversation(page, max_tokens=2000)
    assert page.locator("#stop-button").is_disabled()
    page.evaluate(
        "() => { window.__sent = 0; document.addEventListener('htmx:wsBeforeSend', () => window.__sent++); }"
    )
    page.keyboard.press("Escape")
    assert page.evaluate("() => window.__sent") == 0
    assert page.locator("#chat-error").is_hidden()
    # A stop that reaches the server with nothing running (the answer just ended) is no error.
    reply = raw_frame(page, conversation, {"action": "stop"})
    assert 'id="chat-error"' in reply and "hidden" in reply, reply
    after = start_long_reply(page)
    page.wait_for_selector("#stop-button:enabled")
    stop_and_wait(page, after)
    page.wait_for_selector("#stop-button:disabled")
    page.context.close()


def test_a_busy_model_is_said_once(browser, server) -> None:
    alice = log_in(browser, server, "alice")
    new_conversation(alice, max_tokens=2000)
    bob = log_in(browser, server, "bob")
    new_conversation(bob, "First question")
    after = start_long_reply(alice)  # the one slot is taken; the queue holds none
    before = last_id(bob)
    send(bob, "Anyone there?")
    bob.wait_for_function(
        "(after) => { const m = [...document.querySelectorAll('#messages .msg-user')].pop();"
        " return m && Number(m.id.slice(2)) > after && m.classList.contains('status-unanswered'); }",
        arg=before,
    )
    error = bob.locator("#messages .msg-user").last.locator(".msg-error").inner_text()
    assert error.count("busy") == 1, error
    assert "The model is busy (1 running and 0 waiting, queue limit 0)" in error
    stop_and_wait(alice, after)
    alice.context.close()
    bob.context.close()


# --- 6. A message that can never fit --------------------------------------------------------------


def test_a_message_longer_than_the_context_offers_no_retry_but_a_new_conversation_with_it(
    browser,
    server,
) -> None:
    page = log_in(browser, server, "alice")
    new_conversation(page)
    too_long = " ".join(f"zq{i}x" for i in range(4000))  # ~28,000 characters, far past 4096 tokens
    before = last_id(page)
    send(page, too_long)
    page.wait_for_function(
        "(after) => { const m = [...document.querySelectorAll('#messages .msg-user')].pop();"
        " return m && Number(m.id.slice(2)) > after && m.classList.contains('status-unanswered'); }",
        arg=before,
    )
    message = page.locator("#messages .msg-user").last
    assert "too long for the model" in message.locator(".msg-error").inner_text()
    assert message.locator("button", has_text="Retry").count() == 0
    assert "Retrying cannot help" in message.inner_text()
    message.locator("text=start a new conversation with it").click()
    page.wait_for_url(re.compile(r"/c/new\?from=\d+$"))
    assert page.input_value("#composer-text") == too_long  # there, to shorten or send
    page.context.close()


# --- 7. A conversation is made with its first message ----------------------------------------------


def count_conversations(server: LiveServer) -> int:
    return server.query("SELECT COUNT(*) AS n FROM conversations_conversation")[0]["n"]


def test_a_conversation_is_made_with_its_first_message_and_named_alike_everywhere(browser, server) -> None:
    page = log_in(browser, server, "alice")
    before = count_conversations(server)
    page.click("text=+ New conversation")
    page.wait_for_url(re.compile(r"/c/new$"))
    page.click("text=+ New conversation")  # clicking again saves nothing either
    page.wait_for_url(re.compile(r"/c/new$"))
    page.goto(server.url + "/")
    assert count_conversations(server) == before
    assert page.title().startswith("Chat")
    page.click("text=+ New conversation")
    page.fill("#composer-text", "Ideas for the team lunch")
    page.press("#composer-text", "Enter")
    page.wait_for_url(re.compile(r"/c/\d+/$"))
    open_socket(page)
    assert count_conversations(server) == before + 1
    page.wait_for_selector("#messages .msg-user >> text=Ideas for the team lunch")
    wait_last_answer(page, "complete")
    # One name: the page's heading, the tab, the sidebar, the delete page and its confirmation.
    assert page.locator("#conv-title").get_attribute("data-title") == "Ideas for the team lunch"
    assert page.title().startswith("Ideas for the team lunch")
    assert "Ideas for the team lunch" in sidebar_titles(page)
    page.goto(page.url + "delete")
    assert "“Ideas for the team lunch”" in page.locator(".pane h1").inner_text()
    page.click("button >> text=Delete")
    page.wait_for_selector(".flash >> text=“Ideas for the team lunch” was deleted")
    page.context.close()


# --- 8. The model recorded -----------------------------------------------------------------------


def test_a_browser_chat_records_its_model(browser, server) -> None:
    page = log_in(browser, server, "alice")
    conversation = new_conversation(page)
    exported = page.request.get(f"{server.url}/c/{conversation}/export.json").json()
    assert (
        exported["model"]
        and exported["model"]
        == server.query("SELECT model_id FROM conversations_conversation WHERE id = ?", conversation)[0][
            "model_id"
        ]
    )
    assert exported["model"] in last_answer(page).locator(".msg-who").inner_text()
    page.context.close()


# --- 9. The connection's state across an offline/online cycle ------------------------------------


def test_the_page_shows_its_connection_and_reconnects_at_once_when_back_online(browser, server) -> None:
    page = log_in(browser, server, "alice")
    conversation = new_conversation(page, max_tokens=2000)
    state = page.locator("#connection-state")
    page.wait_for_selector("#connection-state[data-state=connected]")
    assert "connected" in state.inner_text().lower()
    streaming = start_long_reply(page)
    page.context.set_offline(True)
    page.wait_for_selector("#connection-state[data-state=offline]")
    assert "offline" in state.inner_text().lower()
    # The answer this page can no longer follow does not claim to be "writing…".
    assert last_answer(page).locator(".msg-status").inner_text() == "not connected"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "chat-offline.png"))
    # Meanwhile, in another tab that is online: the answer is stopped, a message sent and answered.
    other = log_in(browser, server, "alice")
    other.goto(f"{server.url}/c/{conversation}/")
    open_socket(other)
    stop_and_wait(other, streaming)
    set_max_tokens(other, 20)
    before = last_id(other)
    send(other, "Sent while the first tab was offline")
    wait_last_answer(other, "complete", before)
    other.context.close()
    assert page.locator("#messages >> text=Sent while the first tab was offline").count() == 0
    # The browser's own clock, from its online event to the page showing it is connected again.
    page.evaluate(
        """() => { window.addEventListener('online', () => { window.__online = performance.now(); });
            new MutationObserver(() => {
                if (document.getElementById('connection-state').dataset.state === 'connected')
                    window.__connected = performance.now();
            }).observe(document.getElementById('connection-state'), {attributes: true}); }"""
    )
    page.context.set_offline(False)
    page.wait_for_selector("#connection-state[data-state=connected]", timeout=10_000)
    took = page.evaluate("() => window.__connected - window.__online")
    assert 0 <= took < 3000, f"reconnected {took} ms after the online event"
    page.wait_for_selector("#messages >> text=Sent while the first tab was offline")
    wait_last_answer(page, "complete", before)
    assert page.locator(f"#m-{before} .badge").inner_text().lower() == "stopped"  # the one it missed
    page.context.close()


# --- 10. The delete page's promise ---------------------------------------------------------------


def test_the_delete_page_says_how_long_the_team_keeps_a_deleted_conversation(browser, server) -> None:
    page = log_in(browser, server, "alice")
    conversation = new_conversation(page)
    page.goto(f"{server.url}/c/{conversation}/delete")
    text = page.locator(".pane").inner_text()
    assert "30 days" in text and "retention policy of alpha" in text, text  # the default policy
    django(
        server,
        "from conversations.models import Team\nfrom review.retention import set_retention\n"
        "set_retention(Team.objects.get(name='alpha'), keep_days=None, deleted_keep_days=7, by=None)",
    )
    page.reload()
    text = page.locator(".pane").inner_text()
    assert "7 days" in text and "until the retention policy purges it" not in text, text
    title = page.locator(".pane h1").inner_text()
    page.click("text=Delete >> nth=-1")
    page.wait_for_url(server.url + "/")
    name = re.search(r"“(.*)”", title).group(1)
    assert f"“{name}” was deleted" in page.locator(".flash").inner_text()  # one name everywhere
    page.context.close()


# --- 11. The live sidebar and tab title (two browsers) -------------------------------------------


def sidebar_titles(page) -> list[str]:
    return page.locator("#conversation-list .conversation-title").all_inner_texts()


def wait_sidebar(page, text: str, present: bool = True) -> None:
    page.wait_for_function(
        "([text, present]) => [...document.querySelectorAll('#conversation-list .conversation-title')]"
        ".some((t) => t.textContent.trim() === text) === present",
        arg=[text, present],
        timeout=15_000,
    )


def rename(page, title: str) -> None:
    page.click(".chat-tools summary")
    page.fill("#title-input", title)
    page.click("text=Rename")
    page.wait_for_selector(f"#conv-title >> text={title}")
    open_socket(page)


def test_new_and_renamed_conversations_appear_live_in_every_sidebar_and_the_tab_title(
    browser,
    server,
) -> None:
    alice = log_in(browser, server, "alice")  # tab 1: the chat's home
    alice.wait_for_function("() => document.querySelector('#sidebar') !== null")
    tab2 = alice.context.new_page()  # tab 2, same browser: where she works
    tab2.set_default_timeout(60_000)
    tab2.goto(server.url + "/")
    bob = log_in(browser, server, "bob")  # a teammate, in another browser
    for page in (alice, tab2, bob):
        page.wait_for_function("() => document.body.dataset.listSocket === 'open'")

    conversation = new_conversation(tab2, "Plans for the quarterly review")
    title = "Plans for the quarterly review"
    wait_sidebar(alice, title)  # tab 1 was not reloaded
    assert tab2.title().startswith(title)
    assert title not in sidebar_titles(bob)  # private: not in the teammate's list

    rename(tab2, "Quarterly review")
    wait_sidebar(alice, "Quarterly review")
    wait_sidebar(alice, title, present=False)
    tab2.wait_for_function("() => document.title.startsWith('Quarterly review')")

    # Shared: it appears in bob's list; bob opens it; alice renames it: his list and tab follow.
    tab2.click(".chat-tools summary")
    tab2.select_option("#visibility-select", "team")
    tab2.click("text=Save sharing")
    tab2.wait_for_selector("#conv-title >> text=shared with alpha")
    open_socket(tab2)
    wait_sidebar(bob, "Quarterly review")
    watcher = bob.context.new_page()
    watcher.set_default_timeout(60_000)
    watcher.goto(f"{server.url}/c/{conversation}/")
    open_socket(watcher)
    watcher.wait_for_function("() => document.body.dataset.listSocket === 'open'")
    rename(tab2, "Quarterly review, final")
    wait_sidebar(bob, "Quarterly review, final")
    watcher.wait_for_function("() => document.title.startsWith('Quarterly review, final')")
    wait_sidebar(watcher, "Quarterly review, final")
    link = watcher.locator("#conversation-list a", has_text="final")
    assert "current" in (link.get_attribute("class") or "")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    bob.screenshot(path=str(SCREENSHOTS / "sidebar-live-teammate.png"), full_page=True)
    alice.context.close()
    bob.context.close()


def test_a_change_announced_while_the_list_is_being_fetched_still_reaches_the_sidebar(
    browser, server
) -> None:
    """Two changes close together: the second notice arrives while the list fetched for the first
    is still on its way. The list must end up showing the second change. (htmx queues a second
    request made meanwhile with the target it had when asked: the list the first answer replaces,
    so its answer was swapped into a detached element and the sidebar kept the first change.)"""
    watcher = log_in(browser, server, "alice")  # the sidebar under test
    watcher.add_init_script(
        "document.addEventListener('htmx:wsAfterMessage', (e) => {"
        " if (e.target.id === 'sidebar') window.listNotices = (window.listNotices || 0) + 1; });"
    )
    worker = watcher.context.new_page()  # another tab, where she renames
    worker.set_default_timeout(60_000)
    worker.goto(server.url + "/")
    worker.wait_for_function("() => document.body.dataset.listSocket === 'open'")
    new_conversation(worker, "First title of the day")
    watcher.goto(server.url + "/")
    watcher.wait_for_function("() => document.body.dataset.listSocket === 'open'")
    wait_sidebar(watcher, "First title of the day")

    held = []  # the watcher's first list fetch, held until the second notice has arrived

    def hold_the_first(route) -> None:
        if held:
            route.continue_()
        else:
            held.append(route)

    watcher.route("**/conversations?*", hold_the_first)
    with watcher.expect_request(lambda request: "/conversations?" in request.url):
        rename(worker, "Second title")
    first = held[0].fetch()  # the list as it is now: "Second title"
    before = watcher.evaluate("() => window.listNotices")
    rename(worker, "Third title")
    watcher.wait_for_function("(n) => window.listNotices > n", arg=before)
    held[0].fulfill(response=first)
    wait_sidebar(watcher, "Third title")  # was left at "Second title"
    wait_sidebar(watcher, "Second title", present=False)
    watcher.context.close()


def test_the_page_reconnects_when_the_network_returns_before_its_old_socket_has_closed(
    browser, server
) -> None:
    """Going offline closes the page's sockets; if the network is back before a socket's close has
    completed (a busy server answers it late), the page must still connect again, and the late
    close of the old socket must not undo that. (It waited for the old socket to be closed, then
    took its late close for the server's own, and said "Not connected: reload the page".)"""
    page = log_in(browser, server, "alice")
    page.add_init_script(
        "document.addEventListener('htmx:wsClose', (e) => {"
        " if (e.target.id === 'chat') window.chatCloses = (window.chatCloses || 0) + 1; });"
    )
    conversation = new_conversation(page)
    held = []  # the page side of the first chat socket, whose close is not answered until told

    def route(socket) -> None:
        socket.connect_to_server()
        if not held:
            held.append(socket)
            socket.on_close(lambda code, reason: None)  # the page's close stays unanswered

    page.route_web_socket(re.compile(rf"/ws/c/{conversation}/$"), route)
    page.goto(f"{server.url}/c/{conversation}/")
    page.wait_for_selector("#connection-state[data-state=connected]")
    page.context.set_offline(True)
    page.wait_for_selector("#connection-state[data-state=offline]")
    assert page.evaluate("() => window.chatCloses || 0") == 0  # the old socket is still closing
    page.context.set_offline(False)
    page.wait_for_selector("#connection-state[data-state=connected]", timeout=10_000)
    held[0].close(code=1000)  # the old socket's close completes at last
    page.wait_for_function("() => window.chatCloses >= 1")
    assert page.locator("#connection-state").get_attribute("data-state") == "connected"
    before = last_id(page)
    send(page, "Still connected after all")
    wait_last_answer(page, "complete", before)
    page.context.close()
