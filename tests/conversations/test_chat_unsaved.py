"""A browser reply whose final state cannot be written (another connection holds the write lock):
the page is told in an error frame, and the row gets its real final state once the lock is gone.
The real ASGI application and a tiny random model, as in test_chat_consumer."""

from __future__ import annotations

import json

import pytest

from conversations.live import saving
from conversations.models import Message
from tests.chatsite.test_ready_probe import hold_write_lock, short_busy_timeout
from tests.ws_chat import blocker, connect, finish_run, messages_of, receive_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

BUSY_TIMEOUT = 0.5  # seconds; CHAT_DB_BUSY_TIMEOUT is 5 in production


@pytest.fixture
def short_waits(monkeypatch):
    """The busy timeout that each save attempt waits out (``short_busy_timeout``: the save's
    attempts run in the test's event loop's own executor threads, and on PostgreSQL take pooled
    connections, which had the site's 5 s: the test then took 26 s, not 4), the backoff between
    attempts and the interval of the later attempts, all short: the test waits out every one."""
    from django.db import connection

    with short_busy_timeout(BUSY_TIMEOUT):
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SHOW lock_timeout")
                assert cursor.fetchone()[0] == f"{int(BUSY_TIMEOUT * 1000)}ms"
        monkeypatch.setattr(saving, "RETRY_DELAYS", (0.05, 0.1, 0.2, 0.4))
        monkeypatch.setattr(saving, "LATER_INTERVAL", 0.5)
        yield


@pytest.mark.slow  # waits out five busy timeouts
async def test_it_tells_the_page_a_reply_was_not_saved_and_saves_it_later(
    alice,
    chat,
    short_waits,
    runtime,
) -> None:
    # Greedy: sampling, the tiny random model can draw its end token first (an empty answer, seen
    # once), and the saved text is checked below; greedy, its answer is the same words every run.
    chat.temperature = 0
    await chat.asave(update_fields=["temperature"])
    jobs = [blocker(runtime.model)]  # the reply waits, with its row written, until this ends
    release = None
    try:
        communicator, _, _ = await connect(alice, chat.pk)
        await communicator.send_to(text_data=json.dumps({"action": "send", "text": "hello"}))
        await receive_until(communicator, "waiting")
        release = hold_write_lock()
        jobs[0].cancel()  # the reply runs now, and ends while nothing can be written
        # Five attempts, each waiting out the busy timeout, with backoff between: ~3.3 s when the
        # machine is idle, so allow for a busy one.
        frames = "".join(await receive_until(communicator, "could not be saved", timeout=90))
        assert "not saved" in frames
    finally:
        jobs[0].cancel()
        if release is not None:
            release()
    await finish_run(chat.pk, timeout=60)
    answer = (await messages_of(chat.pk))[-1]
    assert answer.role == "assistant" and answer.status == Message.Status.COMPLETE
    assert answer.content and "saved late" in answer.error
    await communicator.disconnect()
