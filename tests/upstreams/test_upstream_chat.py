"""The browser chat with a model an upstream server runs: the websocket (the real ASGI application)
in front of chatsite itself (``manage.py serve`` with the tiny model, another process) and of the
scripted fault server; the conversation settings' model picker."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from asgiref.sync import sync_to_async
from django.test import Client

from conversations import actions
from conversations.models import Conversation, Message
from tests.upstream_servers import FaultServer, chatsite_upstream
from tests.ws_chat import connect, finish_run, receive_until
from upstreams import registry
from upstreams import services as upstream_services

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    server = chatsite_upstream(tmp_path_factory.mktemp("upstream"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    server = FaultServer(tmp_path_factory.mktemp("faults")).start()
    yield server
    server.kill()


@pytest.fixture
def connections(upstream, faults):
    def add() -> None:
        upstream_services.create_upstream("tiny", f"{upstream.url}/v1", api_key=upstream.keys["alice"])
        upstream_services.create_upstream("faults", faults.url, read_timeout=30)
        for row in upstream_services.Upstream.objects.all():
            upstream_services.check(row)  # discovers the models

    add()
    registry.invalidate()
    yield
    registry.invalidate()


def conversation(alice, alpha, model_id: str, max_tokens: int = 8, **fields) -> Conversation:
    return actions.start_conversation(
        alice, alpha, visibility="team", max_tokens=max_tokens, model_id=model_id, **fields
    )


async def wait_until(predicate, timeout: float = 10):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        value = await sync_to_async(predicate)()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError("the condition was not met in time")


async def test_it_streams_an_upstream_reply_to_the_page_and_logs_its_model_and_connection(
    alice, bob, alpha, connections, upstream
) -> None:
    # Greedy: sampled, the tiny random model's reply was sometimes empty (its first token the end).
    chat = await sync_to_async(conversation)(alice, alpha, "upstream-tiny", temperature=0)
    communicator, connected, _ = await connect(alice, chat.pk)
    watcher, watching, _ = await connect(bob, chat.pk)  # a teammate watching
    assert connected and watching
    await communicator.send_to(text_data=json.dumps({"action": "send", "text": "Hello upstream"}))
    await finish_run(chat.pk)
    (reply,) = await sync_to_async(
        lambda: list(Message.objects.filter(conversation=chat, role="assistant"))
    )()
    assert reply.status == Message.Status.COMPLETE and reply.content
    assert reply.params["model"] == "upstream-tiny" and reply.params["upstream"] == "tiny"
    assert reply.completion_tokens and reply.ttft is not None
    delta = f'id="m-{reply.pk}-body" hx-swap-oob="innerHTML"'
    assert await receive_until(communicator, delta) and await receive_until(watcher, delta)
    # The upstream (chatsite) logged the same reply, asked with the conversation's history.
    # The rows of the upstream's conversation for this call (the upstream serves the module's other
    # tests too: the newest rows of its whole log need not be this call's).
    asked = upstream.query(
        "SELECT conversation_id FROM conversations_message WHERE role = 'user' AND content = ?",
        "Hello upstream",
    )
    assert len(asked) == 1, asked
    rows = upstream.query(
        "SELECT role, content FROM conversations_message WHERE conversation_id = ? ORDER BY id",
        asked[0][0],
    )
    assert [tuple(row) for row in rows] == [("user", "Hello upstream"), ("assistant", reply.content)]
    await communicator.disconnect()
    await watcher.disconnect()


async def test_it_streams_deltas_to_the_writer_and_a_watching_teammate(
    alice, bob, alpha, connections
) -> None:
    chat = await sync_to_async(conversation)(alice, alpha, "fault-slow", max_tokens=100)
    communicator, _, _ = await connect(alice, chat.pk)
    watcher, _, _ = await connect(bob, chat.pk)
    await communicator.send_to(text_data=json.dumps({"action": "send", "text": "slowly"}))
    for socket in (communicator, watcher):
        frames = await receive_until(socket, " w39")
        deltas = [f for f in frames if 'hx-swap-oob="innerHTML"' in f and ("-body" in f or "-open" in f)]
        assert len(deltas) > 1  # the text came in pieces, not at the end
    await finish_run(chat.pk)
    reply = await Message.objects.aget(conversation=chat, role="assistant")
    assert reply.status == Message.Status.COMPLETE and reply.params["upstream"] == "faults"
    assert reply.content == "".join(f" w{i}" for i in range(40))
    await communicator.disconnect()
    await watcher.disconnect()


async def test_it_records_the_default_model_on_a_browser_chat(alice, alpha, connections, settings) -> None:
    settings.CHAT_DEFAULT_MODEL = "upstream-tiny"
    chat = await sync_to_async(actions.start_conversation)(alice, alpha, max_tokens=4)
    communicator, _, _ = await connect(alice, chat.pk)
    await communicator.send_to(text_data=json.dumps({"action": "send", "text": "Hi"}))
    await finish_run(chat.pk)
    await chat.arefresh_from_db()
    assert chat.model_id == "upstream-tiny"
    client = Client()
    await sync_to_async(client.force_login)(alice)
    exported = json.loads((await sync_to_async(client.get)(f"/c/{chat.pk}/export.json")).content)
    assert exported["model"] == "upstream-tiny"
    await communicator.disconnect()


async def test_it_stops_an_upstream_reply_and_closes_the_upstream_stream(
    alice, alpha, connections, faults
) -> None:
    chat = await sync_to_async(conversation)(alice, alpha, "fault-hang")
    communicator, _, _ = await connect(alice, chat.pk)
    await communicator.send_to(text_data=json.dumps({"action": "send", "text": "wait for me"}))
    await sync_to_async(faults.wait_for, thread_sensitive=False)(
        lambda r: r.get("messages") == [{"role": "user", "content": "wait for me"}]
    )
    before = len([r for r in faults.requests() if "disconnected" in r])
    await communicator.send_to(text_data=json.dumps({"action": "stop"}))
    stopped = time.time()
    await wait_until(lambda: len([r for r in faults.requests() if "disconnected" in r]) > before, timeout=5)
    disconnected = [r["disconnected"] for r in faults.requests() if "disconnected" in r][-1]
    assert disconnected - stopped < 1.0
    await finish_run(chat.pk)
    reply = await Message.objects.aget(conversation=chat, role="assistant")
    assert reply.status == Message.Status.STOPPED  # stopped before its first token
    await communicator.disconnect()


async def test_it_stops_an_upstream_reply_mid_stream_with_its_text(alice, alpha, connections) -> None:
    chat = await sync_to_async(conversation)(alice, alpha, "fault-slow", max_tokens=100)
    communicator, _, _ = await connect(alice, chat.pk)
    await communicator.send_to(text_data=json.dumps({"action": "send", "text": "slowly"}))
    await receive_until(communicator, " w1")
    await communicator.send_to(text_data=json.dumps({"action": "stop"}))
    await finish_run(chat.pk)
    reply = await Message.objects.aget(conversation=chat, role="assistant")
    assert reply.status == Message.Status.STOPPED
    assert reply.content.startswith(" w0 w1") and " w39" not in reply.content


async def test_it_marks_the_message_unanswered_for_a_model_the_team_may_not_use(
    alice, alpha, connections
) -> None:
    from upstreams.models import TeamModels

    await TeamModels.objects.acreate(team=alpha, models=["fault-ok"])
    chat = await sync_to_async(conversation)(alice, alpha, "upstream-tiny")
    communicator, _, _ = await connect(alice, chat.pk)
    await communicator.send_to(text_data=json.dumps({"action": "send", "text": "Hi"}))
    assert "may not use the model" in "".join(await receive_until(communicator, "may not use"))
    (message,) = await sync_to_async(lambda: list(Message.objects.filter(conversation=chat)))()
    assert message.status == Message.Status.UNANSWERED
    await communicator.disconnect()


async def test_it_lists_the_teams_models_with_their_connection_and_health_in_the_settings(
    alice, alpha, connections
) -> None:
    def check() -> None:
        from upstreams.models import TeamModels

        TeamModels.objects.create(team=alpha, models=["upstream-tiny", "fault-ok"])
        chat = actions.start_conversation(alice, alpha)
        client = Client()
        client.force_login(alice)
        page = client.get(f"/c/{chat.pk}/").content.decode()
        assert (
            "upstream-tiny — upstream tiny (healthy)" in page
            and "fault-ok — upstream faults (healthy)" in page
        )
        assert "fault-slow" not in page  # not the team's
        client.post(f"/c/{chat.pk}/settings", {"model_id": "fault-slow"})
        chat.refresh_from_db()
        assert chat.model_id == ""  # refused
        client.post(f"/c/{chat.pk}/settings", {"model_id": "upstream-tiny", "max_tokens": "9"})
        chat.refresh_from_db()
        assert chat.model_id == "upstream-tiny" and chat.max_tokens == 9
        TeamModels.objects.filter(team=alpha).update(models=["fault-ok"])
        page = client.get(f"/c/{chat.pk}/").content.decode()
        assert "upstream-tiny — not available now" in page  # still selected, so a save keeps it
        client.post(f"/c/{chat.pk}/settings", {"model_id": "upstream-tiny", "max_tokens": "10"})
        chat.refresh_from_db()
        assert chat.model_id == "upstream-tiny" and chat.max_tokens == 10

    await sync_to_async(check)()


async def test_it_regenerates_and_edits_with_the_upstream_model(alice, alpha, connections, faults) -> None:
    chat = await sync_to_async(conversation)(alice, alpha, "fault-echo")
    communicator, _, _ = await connect(alice, chat.pk)
    await communicator.send_to(text_data=json.dumps({"action": "send", "text": "first"}))
    await finish_run(chat.pk)
    await communicator.send_to(text_data=json.dumps({"action": "regenerate"}))
    await finish_run(chat.pk, answers=2)
    user = await Message.objects.aget(conversation=chat, role="user")
    await communicator.send_to(
        text_data=json.dumps({"action": "edit", "message_id": user.pk, "text": "edited"})
    )
    await finish_run(chat.pk, answers=3)
    replies = await sync_to_async(lambda: list(Message.objects.filter(conversation=chat, role="assistant")))()
    assert [r.status for r in replies] == [Message.Status.COMPLETE] * 3
    assert all(r.params["upstream"] == "faults" for r in replies)
    assert replies[0].superseded_at and replies[1].superseded_at and not replies[2].superseded_at
    asked = [r["messages"] for r in faults.requests() if r.get("model") == "fault-echo"][-3:]
    # The regenerated reply was asked the same history; the edited one only the edited message.
    assert asked[0] == asked[1] == [{"role": "user", "content": "first"}]
    assert asked[2] == [{"role": "user", "content": "edited"}]
    await communicator.disconnect()
