"""The conversation list's socket (/ws/list/, conversations/sidebar.py): who is told a list changed.

The owner's every tab hears of their conversations made, renamed or deleted; teammates hear of a
shared one (and of one made private again, so that it leaves their list); nobody hears of another
person's private conversation, and an outsider hears of nothing. The frame carries no data.
"""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from chatsite.asgi import application
from conversations import actions
from tests.ws_chat import HOST, ORIGIN, cookie_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


async def listen(user) -> WebsocketCommunicator:
    headers = [HOST, ORIGIN]
    if user is not None:
        headers.append(await sync_to_async(cookie_for)(user))
    communicator = WebsocketCommunicator(application, "/ws/list/", headers=headers)
    connected, code = await communicator.connect()
    assert connected, code
    return communicator


async def told(communicator: WebsocketCommunicator) -> bool:
    """Whether a 'changed' frame is waiting (the sends happen on commit, before the write returns)."""
    if await communicator.receive_nothing(timeout=0.3):
        return False
    assert await communicator.receive_from() == "changed"
    while not await communicator.receive_nothing(timeout=0.1):  # one change may send twice
        await communicator.receive_from()
    return True


async def test_an_anonymous_socket_is_refused() -> None:
    communicator = WebsocketCommunicator(application, "/ws/list/", headers=[HOST, ORIGIN])
    connected, code = await communicator.connect()
    assert not connected and code == 4401


async def test_the_owner_and_for_shared_conversations_the_team_are_told(alice, bob, charlie, alpha) -> None:
    tab1, tab2, teammate, outsider = [await listen(u) for u in (alice, alice, bob, charlie)]

    async def each_told(*sockets: WebsocketCommunicator) -> list[bool]:
        """``told`` of each socket, at once: a step waits for its slowest check, not their sum."""
        return list(await asyncio.gather(*(told(s) for s in sockets)))

    conversation = await sync_to_async(actions.create_conversation)(alice, alpha)
    assert await each_told(tab1, tab2, teammate, outsider) == [True, True, False, False]  # private

    await sync_to_async(actions.rename)(conversation, "Budget")
    assert await each_told(tab1, tab2, teammate) == [True, True, False]

    await sync_to_async(actions.set_visibility)(conversation, "team")
    assert (await each_told(tab1, teammate, outsider, tab2))[:3] == [True, True, False]
    await sync_to_async(actions.rename)(conversation, "Budget 2027")
    assert (await each_told(teammate, outsider, tab1, tab2))[:2] == [True, False]

    await sync_to_async(actions.set_visibility)(conversation, "private")  # it leaves bob's list
    assert (await each_told(teammate, tab1, tab2))[:2] == [True, True]
    await sync_to_async(actions.rename)(conversation, "Budget, private")
    assert await each_told(teammate, tab1) == [False, True]

    await sync_to_async(actions.soft_delete)(conversation)
    assert await each_told(tab1, teammate, outsider) == [True, False, False]
    for communicator in (tab1, tab2, teammate, outsider):
        await communicator.disconnect()
