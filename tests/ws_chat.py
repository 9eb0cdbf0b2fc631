"""The chat websocket from a test: connect through the real ASGI application (origin check,
session auth, routing) with Channels' WebsocketCommunicator, read frames, wait for a reply to be
saved. Shared by the websocket test modules; their fixtures (``tiny_model``, ``runtime``, ``chat``)
are in tests/conftest.py."""

from __future__ import annotations

import asyncio

from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from chatsite.asgi import application
from conversations.live import replies
from conversations.models import Message
from inference.model import ChatModel
from inference.sampling import SamplingParams

ORIGIN = (b"origin", b"http://localhost")
HOST = (b"host", b"localhost")  # the site's origin is its Host's (chatsite/origin.py)


def cookie_for(user) -> tuple[bytes, bytes]:
    client = Client()
    client.force_login(user)
    return (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())


# A socket's first frame (the conversation as it is now) is read and rendered in a database
# thread: on a busy machine that took over channels' default 1 s wait.
FIRST_FRAME = 10.0


async def connect(user, conversation_id: int, *, origin=ORIGIN):
    headers = [HOST, origin] if origin else [HOST]
    if user is not None:
        headers.append(await sync_to_async(cookie_for)(user))
    communicator = WebsocketCommunicator(application, f"/ws/c/{conversation_id}/", headers=headers)
    connected, code = await communicator.connect()
    if connected:  # the conversation as it is now, replacing the page's list
        assert 'id="messages" hx-swap-oob="innerHTML"' in await communicator.receive_from(timeout=FIRST_FRAME)
    return communicator, connected, code


async def receive_until(communicator: WebsocketCommunicator, needle: str, timeout: float = 10) -> list[str]:
    """Frames up to and including the first that contains ``needle``."""
    frames = []
    while True:
        frame = await communicator.receive_from(timeout=timeout)
        frames.append(frame)
        if needle in frame:
            return frames


async def drain(communicator: WebsocketCommunicator, quiet: float = 0.5) -> list[str]:
    """Every frame until none comes for ``quiet`` seconds."""
    frames = []
    while not await communicator.receive_nothing(timeout=quiet):
        frames.append(await communicator.receive_from())
    return frames


async def finish_run(conversation_id: int, answers: int = 1, timeout: float = 30) -> None:
    """Wait until the conversation has ``answers`` assistant messages (superseded ones included),
    all saved: none streaming, and no reply starting or running."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    def state() -> tuple[int, bool]:
        rows = Message.objects.filter(conversation_id=conversation_id, role=Message.Role.ASSISTANT)
        return rows.count(), rows.filter(status=Message.Status.STREAMING).exists()

    while loop.time() < deadline:
        count, streaming = await sync_to_async(state)()
        if count >= answers and not streaming and not replies.is_running(conversation_id):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the reply did not finish ({answers} answers expected)")


async def messages_of(conversation_id: int) -> list[Message]:
    return await sync_to_async(lambda: list(Message.objects.filter(conversation_id=conversation_id)))()


def blocker(model: ChatModel, user_key: str = "other"):
    """A job that keeps the only slot busy for seconds (4000 tokens, no early stop), until cancelled."""
    bias = {i: -100.0 for i in model.tokenizer.special_ids}
    prompt = model.prompt_ids([{"role": "user", "content": "Tell me a story."}])
    return model.scheduler.submit(prompt, SamplingParams(max_tokens=4000, logit_bias=bias), user_key=user_key)
