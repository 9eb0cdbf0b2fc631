"""Frames the chat websocket cannot use (lone surrogates, deep nesting, odd or huge ids) get an
error fragment: the socket stays open and usable (never a 1011 close), and nothing is stored."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import sync_to_async

from conversations import actions
from conversations.consumers import MAX_FRAME_BYTES
from conversations.models import Conversation
from tests.ws_chat import connect, messages_of

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest.fixture
def chat(alice, alpha) -> Conversation:
    return actions.start_conversation(alice, alpha, visibility="team", max_tokens=6)


DEPTH = 20_000  # far deeper than Python's recursion limit, and within the frame size limit

BAD = {
    "lone surrogate in text": json.dumps({"action": "send", "text": "hi \ud800 there"}),
    "lone low surrogate in an edit": json.dumps({"action": "edit", "message_id": 1, "text": "\udfff"}),
    "surrogate in the action": json.dumps({"action": "send\ud800", "text": "hi"}),
    "deeply nested text": '{"action": "send", "text": ' + "[" * DEPTH + "]" * DEPTH + "}",
    "deeply nested frame": "[" * DEPTH + "]" * DEPTH,
    "deeply nested object": '{"a":' * (DEPTH // 2) + "1" + "}" * (DEPTH // 2),
    "unicode digits as an id": json.dumps({"action": "retry", "message_id": "\u00b2"}),
    "an id past 64 bits": json.dumps({"action": "retry", "message_id": 99999999999999999999}),
    "an id string past 64 bits": json.dumps({"action": "edit", "message_id": "9" * 30, "text": "x"}),
    "a negative id": json.dumps({"action": "retry", "message_id": -1}),
    "a float id": json.dumps({"action": "retry", "message_id": 1.5}),
    "a huge exponent": '{"action": "retry", "message_id": 1e999999}',
}


@pytest.mark.parametrize("frame", BAD.values(), ids=BAD.keys())
async def test_it_answers_an_unusable_frame_with_an_error_and_keeps_the_socket(alice, chat, frame) -> None:
    assert len(frame.encode("utf-8", "surrogatepass")) <= MAX_FRAME_BYTES
    kept = await sync_to_async(actions.add_user_message)(chat, "kept as it was", author=alice)
    communicator, connected, _ = await connect(alice, chat.pk)
    assert connected
    await communicator.send_to(text_data=frame)
    reply = await communicator.receive_from(timeout=5)
    assert 'id="chat-error"' in reply and "hidden" not in reply
    assert "codec" not in reply and "Traceback" not in reply  # our message, not Python's
    assert [(m.pk, m.content) for m in await messages_of(chat.pk)] == [(kept.pk, "kept as it was")]
    # The connection survives: a valid frame still gets its answer.
    await communicator.send_to(text_data=json.dumps({"action": "stop"}))
    cleared = await communicator.receive_from(timeout=5)  # Stop with nothing running: no error
    assert 'id="chat-error"' in cleared and "hidden" in cleared
    await communicator.disconnect()


async def test_it_names_the_lone_surrogate(alice, chat) -> None:
    communicator, connected, _ = await connect(alice, chat.pk)
    assert connected
    await communicator.send_to(text_data=json.dumps({"action": "send", "text": "\ud800"}))
    reply = await communicator.receive_from(timeout=5)
    assert "surrogate" in reply
    await communicator.disconnect()
