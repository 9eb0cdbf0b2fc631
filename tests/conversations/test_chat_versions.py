"""Versions of a message in the browser chat: regenerate and edit keep the earlier answers and
branches; the page browses them (‹ 1 / 2 ›) over the websocket; the prompt is the chosen branch;
review shows every version. Real websocket (Channels' communicator), real DB, the tiny model.
"""

from __future__ import annotations

import json

import pytest
from asgiref.sync import sync_to_async

from conversations import queries
from conversations.models import Message
from inference.jobs import Overloaded
from tests.ws_chat import connect, drain, finish_run, messages_of, receive_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

REFRESHED = 'id="messages" hx-swap-oob="innerHTML"'  # the conversation sent whole


async def act(communicator, **frame) -> list[str]:
    await communicator.send_to(text_data=json.dumps(frame))
    return await drain(communicator)


async def choose(communicator, message_id: int, until: str = REFRESHED) -> list[str]:
    """Ask for a version: the frames up to the conversation sent whole, the last the action causes
    (the consumer answers the action, then forwards the refresh its commit queued); for a refused
    one, up to the error naming ``until``. No wait for a quiet socket, as ``act`` does."""
    await communicator.send_to(text_data=json.dumps({"action": "version", "message_id": str(message_id)}))
    return await receive_until(communicator, until)


def visible(rows: list[Message]) -> list[int]:
    return [m.pk for m in rows if m.superseded_at is None]


async def test_regenerate_makes_a_version_and_the_page_browses_back_to_it(alice, chat, runtime) -> None:
    # Greedy: the tiny random model, sampling, drew its end token first once (an empty answer, which
    # a prompt leaves out); greedy, its answer to "first" is the same words every run.
    chat.temperature = 0
    await chat.asave(update_fields=["temperature"])
    communicator, _, _ = await connect(alice, chat.pk)
    await act(communicator, action="send", text="first")
    await finish_run(chat.pk)
    frames = "".join(await act(communicator, action="regenerate"))
    await finish_run(chat.pk, answers=2)
    frames += "".join(await drain(communicator))
    question, old, new = await messages_of(chat.pk)
    assert new.version_of_id == old.pk and old.version_of_id is None
    assert "2 / 2" in frames and "version-prev" in frames  # the new answer's pager, in the page
    # Back to version 1: the first answer is shown again, the second hidden; the page gets it whole.
    frames = "".join(await choose(communicator, old.pk))
    assert visible(await messages_of(chat.pk)) == [question.pk, old.pk]
    assert REFRESHED in frames and "1 / 2" in frames
    history = await sync_to_async(queries.prompt_messages)(chat)
    assert [m["content"] for m in history] == ["first", old.content]  # the prompt: the chosen branch
    # Regenerating again makes version 3 of the same answer.
    await act(communicator, action="regenerate")
    await finish_run(chat.pk, answers=3)
    rows = await messages_of(chat.pk)
    assert rows[-1].version_of_id == old.pk and visible(rows) == [question.pk, rows[-1].pk]
    assert "3 / 3" in await page_html(alice, chat.pk)
    await communicator.disconnect()


async def test_edit_keeps_the_earlier_branch_and_switching_restores_it_whole(alice, chat, runtime) -> None:
    communicator, _, _ = await connect(alice, chat.pk)
    for n, text in enumerate(("one", "two", "three"), start=1):
        await act(communicator, action="send", text=text)
        await finish_run(chat.pk, answers=n)
    u1, a1, u2, a2, u3, a3 = await messages_of(chat.pk)
    await act(communicator, action="edit", message_id=str(u2.pk), text="TWO")
    await finish_run(chat.pk, answers=4)
    rows = await messages_of(chat.pk)
    u2b, a2b = rows[-2:]
    assert u2b.version_of_id == u2.pk and visible(rows) == [u1.pk, a1.pk, u2b.pk, a2b.pk]
    # Version 1 of the second message brings back its whole branch (its answer and the turn after).
    await choose(communicator, u2.pk)
    rows = await messages_of(chat.pk)
    assert visible(rows) == [u1.pk, a1.pk, u2.pk, a2.pk, u3.pk, a3.pk]
    history = await sync_to_async(queries.prompt_messages)(chat)
    assert [m["content"] for m in history if m["role"] == "user"] == ["one", "two", "three"]
    # And back to version 2.
    await choose(communicator, u2b.pk)
    assert visible(await messages_of(chat.pk)) == [u1.pk, a1.pk, u2b.pk, a2b.pk]
    # A version that is not a sibling of a shown message is refused, and nothing changes.
    frames = "".join(await choose(communicator, a3.pk, until="not shown"))
    assert "not shown" in frames
    assert visible(await messages_of(chat.pk)) == [u1.pk, a1.pk, u2b.pk, a2b.pk]
    await communicator.disconnect()


async def test_review_shows_every_version(alice, chat, runtime, admin_client) -> None:
    communicator, _, _ = await connect(alice, chat.pk)
    await act(communicator, action="send", text="first")
    await finish_run(chat.pk)
    await act(communicator, action="regenerate")
    await finish_run(chat.pk, answers=2)
    await communicator.disconnect()
    page = await sync_to_async(admin_client.get)(f"/admin/conversations/conversation/{chat.pk}/change/")
    html = page.content.decode()
    assert "version 1 of 2" in html and "version 2 of 2" in html


async def page_html(user, conversation_id: int) -> str:
    from django.test import Client

    def get() -> str:
        client = Client()
        client.force_login(user)
        return client.get(f"/c/{conversation_id}/").content.decode()

    return await sync_to_async(get)()


async def test_a_regenerate_the_model_cannot_take_keeps_the_answer_shown(
    alice, chat, runtime, monkeypatch
) -> None:
    communicator, _, _ = await connect(alice, chat.pk)
    await act(communicator, action="send", text="first")
    await finish_run(chat.pk)
    question, answer = await messages_of(chat.pk)

    def full(*args, **kwargs):
        raise Overloaded("the model is busy: 1 running and 4 waiting (queue limit 4)")

    monkeypatch.setattr(runtime.model.scheduler, "submit", full)
    frames = "".join(await act(communicator, action="regenerate"))
    assert "The model is busy" in frames
    rows = await messages_of(chat.pk)
    # Nothing was lost or hidden: the answer is still the conversation's, the question answered.
    assert visible(rows) == [question.pk, answer.pk] and rows[0].status == Message.Status.COMPLETE
    assert f'id="m-{answer.pk}"' in frames  # the page shows it again
    await communicator.disconnect()
