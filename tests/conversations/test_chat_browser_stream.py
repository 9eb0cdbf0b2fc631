"""A streamed answer in real headless Chromium (Debian's, through Playwright) against a live Daphne:
the answer is a fixed markdown text (headings, lists, a table, code fences, a quote) streamed by the
scripted upstream (tests/fault_upstream.py, ``fault-markdown``) a few characters at a time, so the
page gets it as many deltas of what changed (consumers.delta_fragment, swapped by htmx). After the
last delta, the answer's body is the same DOM as the page reloaded shows, for the viewer who sent
the message and for one who opened the conversation mid-answer (sent the whole answer so far,
then the deltas)."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import pytest

from tests.browser import log_in as browser_log_in
from tests.live_server import LiveServer
from tests.paced_model import paced_env, write_paced_model
from tests.upstream_servers import FaultServer

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PASSWORD = "a-long-test-password-10"

SETUP = f"""
import sys, django
django.setup()
from django.contrib.auth import get_user_model
from conversations import actions
from conversations.models import Team
from upstreams import services
User = get_user_model()
for name in ("alice", "bob"):
    user = User.objects.get(username=name)
    user.set_password({PASSWORD!r})
    user.save()
row = services.create_upstream("faults", sys.argv[1], read_timeout=30)
services.check(row)
alice, alpha = User.objects.get(username="alice"), Team.objects.get(name="alpha")
chat = actions.start_conversation(alice, alpha, visibility="team", model_id="fault-markdown", max_tokens=2000)
print(chat.pk)
"""

# The answer's body as the browser holds it: the open block's wrapper replaced by its children,
# the code blocks' Copy buttons (added by chat.js after each swap) left out.
BODY_JS = """(id) => {
  const body = document.getElementById('m-' + id + '-body');
  if (!body) return null;
  const copy = body.cloneNode(true);
  copy.querySelectorAll('button.copy-code').forEach((b) => b.remove());
  copy.querySelectorAll('.msg-open').forEach((w) => w.replaceWith(...w.childNodes));
  return copy.innerHTML;
}"""

# Keeps, after each websocket message, the last answer's body while it is still streaming.
RECORD_JS = """() => {
  window.__bodies = [];
  document.body.addEventListener('htmx:wsAfterMessage', () => {
    const a = [...document.querySelectorAll('#messages .msg-assistant')].pop();
    if (!a || !a.classList.contains('status-streaming')) return;
    const body = document.getElementById(a.id + '-body');
    const copy = body.cloneNode(true);
    copy.querySelectorAll('button.copy-code').forEach((b) => b.remove());
    copy.querySelectorAll('.msg-open').forEach((w) => w.replaceWith(...w.childNodes));
    window.__bodies.push([a.id, copy.innerHTML]);
  });
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("chat-stream")
    faults = FaultServer(folder / "faults").start()
    env = paced_env(write_paced_model(folder / "model"))
    live = LiveServer(folder / "data", {**env, "CHAT_SLOTS": "1"}).start()
    try:
        live.chat = int(live.run_python(SETUP, faults.url).split()[-1])
        yield live
    finally:
        live.stop()
        faults.kill()


log_in = partial(browser_log_in, password=PASSWORD)


def open_chat(page, server: LiveServer) -> None:
    page.goto(f"{server.url}/c/{server.chat}/")
    page.wait_for_selector("body.ws-open")
    page.evaluate(RECORD_JS)


def test_a_streamed_answer_ends_as_the_page_reloaded_shows_it(browser, server) -> None:
    alice, bob = log_in(browser, server, "alice"), log_in(browser, server, "bob")
    open_chat(alice, server)
    alice.fill("#composer-text", "Show me some markdown")
    alice.press("#composer-text", "Enter")
    # Bob opens the conversation once the answer is well under way.
    alice.wait_for_function(
        "() => { const a = [...document.querySelectorAll('#messages .msg-assistant')].pop();"
        " return a && a.classList.contains('status-streaming')"
        " && a.querySelector('.msg-body').textContent.includes('Steps'); }"
    )
    open_chat(bob, server)
    finished = (
        "() => { const a = [...document.querySelectorAll('#messages .msg-assistant')].pop();"
        " return a && a.classList.contains('status-complete'); }"
    )
    for page in (alice, bob):
        page.wait_for_function(finished, timeout=60_000)
    answer = alice.evaluate("() => [...document.querySelectorAll('#messages .msg-assistant')].pop().id")
    answer_id = int(answer.removeprefix("m-"))
    streamed = {
        who: [html for mid, html in page.evaluate("() => window.__bodies") if mid == answer]
        for who, page in (("alice", alice), ("bob", bob))
    }
    assert len(streamed["alice"]) > 10  # many deltas, not one render at the end
    assert streamed["bob"], "bob saw none of the answer streaming"
    final = alice.evaluate(BODY_JS, answer_id)
    for page in (alice, bob):
        page.reload()
        page.wait_for_selector("body.ws-open")
        reloaded = page.evaluate(BODY_JS, answer_id)
        assert reloaded == final
    assert "<table>" in final and '<pre class="code">' in final and "<h2>" in final and "<ol>" in final
    assert "<script>" not in final
    for who, bodies in streamed.items():
        assert bodies[-1] == final, who  # the last delta left what a full render shows
