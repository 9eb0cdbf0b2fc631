"""The way of an upstream call to its first token (issue 12's added TTFT), in process: the real ASGI
application in front of the scripted fault server (another process).

The call's log rows are written while the upstream works on the first token, not after it; what
did not go through (the upstream failed, the write failed, the client went away) is undone, so the
log holds exactly the calls that produced a token, as before.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from django.test import AsyncClient

from conversations import actions
from conversations.models import Conversation, Message
from tests.chat_runtime import serving
from tests.chatsite.test_ready_probe import hold_write_lock, short_busy_timeout
from tests.upstream_servers import FaultServer
from tests.ws_chat import connect, finish_run
from upstreams import registry
from upstreams import services as upstream_services
from upstreams.models import Upstream

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    server = FaultServer(tmp_path_factory.mktemp("faults-path")).start()
    yield server
    server.kill()


@pytest.fixture
def site(tiny_model, faults):  # tiny_model (tests/conftest.py): the token counter
    with serving(tiny_model):
        upstream_services.create_upstream(
            "faults", faults.url, read_timeout=30, models=["fault-ok", "fault-500", "fault-hang"]
        )
        registry.invalidate()
        yield
        registry.invalidate()


@pytest.fixture
def raw_key(alice, alpha) -> str:
    return actions.create_api_key(alice, alpha, "path")[1]


async def call(raw: str, model: str, text: str, **extra):
    body = {"model": model, "messages": [{"role": "user", "content": text}], **extra}
    return await AsyncClient().post(
        "/v1/chat/completions",
        data=json.dumps(body),
        content_type="application/json",
        headers={"Authorization": f"Bearer {raw}"},
    )


def replies(text: str):
    """The assistant rows of the API calls whose user message was ``text``."""
    return Message.objects.filter(
        role=Message.Role.ASSISTANT,
        conversation__source=Conversation.Source.API,
        conversation__messages__content=text,
    )


async def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.02)


async def test_the_call_is_logged_while_the_upstream_works_on_its_first_token(site, raw_key, faults) -> None:
    text = "logged before the first token"
    request = asyncio.ensure_future(call(raw_key, "fault-hang", text, stream=True))
    try:
        # fault-hang sends its role chunk and then nothing: the call never gets a first token.
        await wait_until(lambda: replies(text).aexists())
        reply = await replies(text).aget()
        assert reply.status == Message.Status.STREAMING and reply.params["upstream"] == "faults"
        assert not request.done()  # still waiting for the first token
    finally:
        request.cancel()  # the client goes away
    with pytest.raises(asyncio.CancelledError):
        await request
    # A call that never produced a token leaves nothing, and the upstream saw the client go.
    assert not await replies(text).aexists()
    assert not await Conversation.objects.filter(messages__content=text).aexists()
    await asyncio.to_thread(faults.wait_for, lambda r: "disconnected" in r)


async def test_a_call_that_fails_before_its_first_token_leaves_nothing(site, raw_key) -> None:
    response = await call(raw_key, "fault-500", "failed upstream", stream=True)
    assert response.status_code == 502
    assert not await Conversation.objects.filter(messages__content="failed upstream").aexists()


async def test_a_log_write_that_fails_closes_the_upstream_call_at_once(site, raw_key, faults) -> None:
    """The write fails (another connection holds the lock past the busy timeout, here 1 s) while the
    upstream still works on the first token: the call is closed without waiting for it, and
    answers 503."""
    text = "the write fails"
    release = hold_write_lock()
    try:
        with short_busy_timeout(1.0):
            response = await call(raw_key, "fault-hang", text, stream=True)
    finally:
        release()
    assert response.status_code == 503, response.content
    assert response.json()["error"]["code"] == "database_unavailable"
    sent = await asyncio.to_thread(faults.wait_for, lambda r: text in json.dumps(r.get("messages")))
    assert sent["model"] == "fault-hang"
    await asyncio.to_thread(faults.wait_for, lambda r: "disconnected" in r)
    assert not await Conversation.objects.filter(messages__content=text).aexists()


async def test_a_browser_reply_names_its_connection_while_the_upstream_works_on_its_first_token(
    site, alice, alpha, faults
) -> None:
    chat = await asyncio.to_thread(
        actions.start_conversation, alice, alpha, visibility="team", max_tokens=8, model_id="fault-hang"
    )
    communicator, connected, _ = await connect(alice, chat.pk)
    assert connected
    await communicator.send_to(text_data=json.dumps({"action": "send", "text": "name it"}))
    await asyncio.to_thread(faults.wait_for, lambda r: "name it" in json.dumps(r.get("messages")))

    async def named() -> bool:
        reply = await Message.objects.filter(conversation=chat, role=Message.Role.ASSISTANT).afirst()
        return reply is not None and reply.params.get("upstream") == "faults"

    await wait_until(named)  # no second write once the call is open: the row had it from the start
    await communicator.send_to(text_data=json.dumps({"action": "stop"}))
    await finish_run(chat.pk)
    await communicator.disconnect()


async def test_a_stale_registry_answers_at_once_and_reads_the_rows_again_in_the_background(
    site, faults
) -> None:
    assert set((await registry.apool()).connections) == {"faults"}
    # Added by another process (no invalidate here): seen once the rows are read again.
    await Upstream.objects.acreate(name="other", base_url=faults.url, listed_models=["fault-ok"])
    registry._loaded_at -= registry.RELOAD_INTERVAL + 1
    assert set((await registry.apool()).connections) == {"faults"}  # no wait for the read

    async def reread() -> bool:
        return "other" in (await registry.apool()).connections

    await wait_until(reread)


async def test_an_idle_registry_reads_the_rows_again_before_answering(site, faults) -> None:
    assert set((await registry.apool()).connections) == {"faults"}
    await Upstream.objects.acreate(name="other", base_url=faults.url, listed_models=["fault-ok"])
    registry._loaded_at -= registry.MAX_AGE + 1
    assert set((await registry.apool()).connections) == {"faults", "other"}


async def stream_body(response) -> bytes:
    return b"".join([part async for part in response.streaming_content])


async def test_the_stream_passes_the_upstreams_own_text_with_only_the_model_changed(
    site, raw_key, settings
) -> None:
    """The fault server writes its chunks with Python's spacing (``"model": "fault-ok"``): they go
    on as written, not decoded and encoded again; an alias gets its id written into that text."""
    asked = await call(raw_key, "fault-ok", "as written", stream=True)
    body = await stream_body(asked)
    assert b'"model": "fault-ok", "choices": [{"index": 0, "delta": {"content": " two"}' in body
    settings.CHAT_DEFAULT_MODEL = "fault-ok"
    aliased = await call(raw_key, "gpt-3.5-turbo", "as written, aliased", stream=True)
    body = await stream_body(aliased)
    assert b'"model": "gpt-3.5-turbo", "choices": [{"index": 0, "delta": {"content": " two"}' in body
    assert b'"fault-ok"' not in body
