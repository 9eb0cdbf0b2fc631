"""A browser reply whose final state cannot be written (another connection holds the write lock):
the page is told in an error frame, and the row gets its real final state once the lock is gone.
The real ASGI application and a tiny random model, as in test_chat_consumer."""

from __future__ import annotations

import json

import pytest

from conversations.models import Message
from tests.chatsite.test_ready_probe import hold_write_lock
from tests.ws_chat import blocker, connect, finish_run, messages_of, receive_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest.mark.slow  # waits out five busy timeouts (~29 s)
async def test_it_tells_the_page_a_reply_was_not_saved_and_saves_it_later(
    alice,
    chat,
    runtime,
) -> None:
    jobs = [blocker(runtime.model)]  # the reply waits, with its row written, until this ends
    release = None
    try:
        communicator, _, _ = await connect(alice, chat.pk)
        await communicator.send_to(text_data=json.dumps({"action": "send", "text": "hello"}))
        await receive_until(communicator, "waiting")
        release = hold_write_lock()
        jobs[0].cancel()  # the reply runs now, and ends while nothing can be written
        # Five attempts, each waiting out the 5 s busy timeout, with backoff between: ~29 s when the
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
