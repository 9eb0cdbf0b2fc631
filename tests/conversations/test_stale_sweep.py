"""Replies left 'streaming' by a dead process (stale heartbeat) are marked interrupted, and the open
pages of their conversation are told at once (the message shows as interrupted, not "writing…").
A page view sweeps only the conversation it shows; the periodic sweep does every conversation.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.test import Client
from django.utils import timezone

from conversations import actions
from conversations.live import runner
from conversations.models import Conversation, Message
from tests.ws_chat import connect, receive_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest.fixture
def chat(alice, alpha) -> Conversation:
    return actions.start_conversation(alice, alpha, visibility="team", title="watched")


def stale_reply(conversation: Conversation) -> Message:
    (reply,) = actions.start_assistant_messages(conversation, 1, params={}, prompt_tokens=3)
    actions.checkpoint_assistant_message(reply.pk, "half an answer")
    Message.objects.filter(pk=reply.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    return reply


def interrupted_article(frames: list[str], message_id: int) -> str:
    frame = next(f for f in frames if f'id="m-{message_id}"' in f and "Interrupted" in f)
    return frame.split(f'id="m-{message_id}"')[1].split("</article>")[0]


async def test_it_tells_open_pages_when_the_periodic_sweep_interrupts_a_reply(alice, bob, chat) -> None:
    reply = await sync_to_async(stale_reply)(chat)
    communicator, connected, _ = await connect(bob, chat.pk)
    assert connected
    assert await sync_to_async(runner.sweep_stale_sync)() == 1
    frames = await receive_until(communicator, "Interrupted", timeout=5)
    assert "half an answer" in interrupted_article(frames, reply.pk)
    await communicator.disconnect()


async def test_it_sweeps_only_the_shown_conversation_on_a_page_view_and_tells_its_pages(
    alice, bob, alpha, chat
) -> None:
    reply = await sync_to_async(stale_reply)(chat)
    other = await sync_to_async(actions.start_conversation)(alice, alpha)
    elsewhere = await sync_to_async(stale_reply)(other)
    communicator, connected, _ = await connect(bob, chat.pk)
    assert connected

    def view_page() -> int:
        client = Client()
        client.force_login(alice)
        return client.get(f"/c/{chat.pk}/").status_code

    assert await sync_to_async(view_page)() == 200
    frames = await receive_until(communicator, "Interrupted", timeout=5)
    assert "half an answer" in interrupted_article(frames, reply.pk)
    await sync_to_async(elsewhere.refresh_from_db)()
    assert elsewhere.status == Message.Status.STREAMING  # left to the periodic sweep
    await communicator.disconnect()


async def test_it_tells_open_pages_when_a_new_reply_interrupts_a_stale_one(alice, bob, chat) -> None:
    reply = await sync_to_async(stale_reply)(chat)
    communicator, connected, _ = await connect(bob, chat.pk)
    assert connected
    await sync_to_async(actions.start_assistant_messages)(chat, 1, params={}, prompt_tokens=3)
    frames = await receive_until(communicator, "Interrupted", timeout=5)
    assert "half an answer" in interrupted_article(frames, reply.pk)
    await communicator.disconnect()
