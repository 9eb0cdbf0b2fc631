"""The chat websocket, through Channels' WebsocketCommunicator and the real ASGI application
(origin check, session auth, routing), with a tiny random model standing in for the real one
(the browser tests run the real one).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client
from django.urls import reverse

from chatsite.asgi import application
from conversations import actions, render
from conversations.consumers import MAX_FRAME_BYTES
from conversations.live import runner
from conversations.models import Conversation, Message
from conversations.render import StreamRender, render_markdown
from inference.jobs import Overloaded
from tests.oob_dom import Page, normal
from tests.ws_chat import (
    FIRST_FRAME,
    HOST,
    ORIGIN,
    blocker,
    connect,
    cookie_for,
    drain,
    finish_run,
    messages_of,
    receive_until,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

# --- Refusals ------------------------------------------------------------------------------------


async def test_it_refuses_a_foreign_origin(alice, chat) -> None:
    communicator, connected, _ = await connect(alice, chat.pk, origin=(b"origin", b"http://evil.example"))
    assert not connected
    await communicator.disconnect()


async def test_it_refuses_a_missing_origin_header(alice, chat) -> None:
    communicator, connected, _ = await connect(alice, chat.pk, origin=None)
    assert not connected
    await communicator.disconnect()


async def test_it_refuses_anonymous_visitors(chat) -> None:
    communicator, connected, code = await connect(None, chat.pk)
    assert not connected and code == 4401
    await communicator.disconnect()


async def test_it_sends_the_current_conversation_on_connect(alice, chat) -> None:
    await sync_to_async(actions.add_user_message)(chat, "sent before the socket opened", author=alice)
    communicator = WebsocketCommunicator(
        application, f"/ws/c/{chat.pk}/", headers=[HOST, ORIGIN, await sync_to_async(cookie_for)(alice)]
    )
    connected, _ = await communicator.connect()
    assert connected
    frame = await communicator.receive_from(timeout=FIRST_FRAME)
    assert frame.startswith('<div id="messages" hx-swap-oob="innerHTML">')
    assert "sent before the socket opened" in frame
    await communicator.disconnect()


async def test_it_closes_a_teammates_socket_when_the_owner_makes_it_private(alice, bob, chat) -> None:
    communicator, connected, _ = await connect(bob, chat.pk)
    assert connected
    await sync_to_async(actions.set_visibility)(chat, "private")
    assert "no longer available" in await communicator.receive_from(timeout=5)
    assert (await communicator.receive_output(timeout=5))["type"] == "websocket.close"
    await communicator.disconnect()


async def test_it_refuses_someone_elses_conversation(charlie, bravo, chat) -> None:
    communicator, connected, code = await connect(charlie, chat.pk)
    assert not connected and code == 4404
    await communicator.disconnect()
    missing, connected, code = await connect(charlie, chat.pk + 1000)
    assert not connected and code == 4404  # the same answer as for a missing one
    await missing.disconnect()


async def test_it_refuses_a_teammate_on_a_private_conversation(alice, bob, alpha) -> None:
    private = await sync_to_async(actions.start_conversation)(alice, alpha)
    communicator, connected, code = await connect(bob, private.pk)
    assert not connected and code == 4404
    await communicator.disconnect()


MALFORMED = {
    "not json": "hello",
    "a list": "[1, 2]",
    "no action": json.dumps({"text": "hi"}),
    "unknown action": json.dumps({"action": "delete_everything"}),
    "empty text": json.dumps({"action": "send", "text": "   "}),
    "text not a string": json.dumps({"action": "send", "text": {"html": "<b>"}}),
    "NUL in text": json.dumps({"action": "send", "text": "a\x00b"}),
    "edit without id": json.dumps({"action": "edit", "text": "x"}),
    "retry with a bad id": json.dumps({"action": "retry", "message_id": "1; drop table"}),
    "too long text": json.dumps({"action": "send", "text": "x" * 40_000}),
}


@pytest.mark.parametrize("frame", MALFORMED.values(), ids=MALFORMED.keys())
async def test_it_answers_a_malformed_frame_with_an_error_and_stores_nothing(alice, chat, frame) -> None:
    communicator, connected, _ = await connect(alice, chat.pk)
    assert connected
    await communicator.send_to(text_data=frame)
    reply = await communicator.receive_from(timeout=5)
    assert 'id="chat-error"' in reply and "hidden" not in reply
    assert await messages_of(chat.pk) == []
    # The connection survives: a valid frame still gets its answer.
    await communicator.send_to(text_data=json.dumps({"action": "stop"}))
    cleared = await communicator.receive_from(timeout=5)  # Stop with nothing running: no error
    assert 'id="chat-error"' in cleared and "hidden" in cleared
    await communicator.disconnect()


async def test_it_refuses_an_oversized_frame(alice, chat) -> None:
    communicator, connected, _ = await connect(alice, chat.pk)
    assert connected
    await communicator.send_to(text_data=json.dumps({"action": "send", "text": "é" * MAX_FRAME_BYTES}))
    assert "too large" in await communicator.receive_from(timeout=5)
    await communicator.send_to(bytes_data=b"\x00" * 10)
    assert "Binary frames" in await communicator.receive_from(timeout=5)
    assert await messages_of(chat.pk) == []
    await communicator.disconnect()


# --- Chatting ------------------------------------------------------------------------------------


async def test_it_commits_the_message_and_streams_the_answer_to_every_viewer(
    alice, bob, chat, runtime
) -> None:
    # Greedy, so that the answer is the same every run: at the default temperature the tiny random
    # model sometimes ends at once, and an empty answer streams no delta.
    chat.temperature = 0
    await chat.asave(update_fields=["temperature"])
    author, _, _ = await connect(alice, chat.pk)
    watcher, connected, _ = await connect(bob, chat.pk)  # a teammate: the conversation is shared
    assert connected
    await author.send_to(text_data=json.dumps({"action": "send", "text": "Hello <b>there</b>"}))
    await finish_run(chat.pk)
    seen = "".join(await drain(watcher))
    assert "Hello &lt;b&gt;there&lt;/b&gt;" in seen  # the user message, escaped
    assert 'hx-swap-oob="beforeend:#messages"' in seen
    assert 'hx-swap-oob="innerHTML"' in seen  # deltas into the answer's body
    assert "msg-assistant status-complete" in "".join(await drain(author))
    user_message, answer = await messages_of(chat.pk)
    assert (user_message.role, user_message.content) == ("user", "Hello <b>there</b>")
    assert user_message.author_id == alice.pk
    assert answer.role == "assistant" and answer.status == Message.Status.COMPLETE
    assert answer.content and answer.completion_tokens and answer.params["model"] == "tiny"
    await sync_to_async(chat.refresh_from_db)()
    assert chat.title == "Hello <b>there</b>"  # from the first message
    await author.disconnect()
    await watcher.disconnect()


async def test_it_keeps_the_message_as_unanswered_when_the_queue_is_full(
    alice, chat, runtime, monkeypatch
) -> None:
    def full(*args, **kwargs):
        raise Overloaded("1 running and 4 waiting, queue limit 4")

    monkeypatch.setattr(runtime.model.scheduler, "submit", full)
    communicator, _, _ = await connect(alice, chat.pk)
    await communicator.send_to(text_data=json.dumps({"action": "send", "text": "anyone there?"}))
    frames = "".join(await receive_until(communicator, "The model is busy"))
    (message,) = await messages_of(chat.pk)
    assert message.status == Message.Status.UNANSWERED and message.content == "anyone there?"
    assert "Retry" in frames or "Retry" in await communicator.receive_from(timeout=5)
    monkeypatch.undo()
    await communicator.send_to(text_data=json.dumps({"action": "retry", "message_id": message.pk}))
    await finish_run(chat.pk)
    statuses = [(m.role, m.status) for m in await messages_of(chat.pk)]
    assert statuses == [("user", "complete"), ("assistant", "complete")]
    await communicator.disconnect()


async def test_it_runs_one_generation_at_a_time_and_stops_it(alice, chat, runtime) -> None:
    chat.max_tokens = 400
    await sync_to_async(chat.save)()
    # Another user's job holds the only slot, so that the first reply (waiting for it) is still
    # to come when the second message and Stop arrive: the tiny model writes 400 tokens in 0.1 s.
    jobs = [blocker(runtime.model)]
    try:
        communicator, _, _ = await connect(alice, chat.pk)
        await communicator.send_to(text_data=json.dumps({"action": "send", "text": "a long one"}))
        await receive_until(communicator, "waiting")
        await communicator.send_to(text_data=json.dumps({"action": "send", "text": "and another"}))
        await receive_until(communicator, "wait for it, or press Stop")  # the second send, refused
        await communicator.send_to(text_data=json.dumps({"action": "stop"}))
        await finish_run(chat.pk)
    finally:
        jobs[0].cancel()
    rows = await messages_of(chat.pk)
    assert [m.content for m in rows if m.role == "user"] == ["a long one"]  # the second was refused
    assert rows[-1].role == "assistant" and rows[-1].status == Message.Status.STOPPED
    await communicator.disconnect()


async def test_a_message_sent_as_soon_as_the_page_hears_the_reply_ended_is_taken(
    alice, chat, runtime, monkeypatch
) -> None:
    """The page sends a message it queued as soon as it is told the reply ended. That news goes out
    when the reply's final row commits, in a database thread, a moment before the run's task ends
    (on a busy machine, a long moment: refused as busy, the message went back to the box). Here the
    thread is held after its commit until the next message has had its answer."""
    saved, go = threading.Event(), threading.Event()
    finish = actions.finish_assistant_message
    calls = []

    def finish_and_hold_the_first(*args, **kwargs) -> None:
        finish(*args, **kwargs)
        calls.append(args[0])
        if len(calls) == 1:
            saved.set()
            go.wait(60)

    monkeypatch.setattr(actions, "finish_assistant_message", finish_and_hold_the_first)
    communicator, _, _ = await connect(alice, chat.pk)
    try:
        await communicator.send_to(text_data=json.dumps({"action": "send", "text": "first"}))
        assert await asyncio.to_thread(saved.wait, 30)
        await receive_until(communicator, "msg-assistant status-complete")  # what the page hears
        await communicator.send_to(text_data=json.dumps({"action": "send", "text": "queued"}))
        frame = ""
        while "msg-user" not in frame and actions.BUSY_MESSAGE not in frame:
            frame = await communicator.receive_from(timeout=10)
        assert actions.BUSY_MESSAGE not in frame
    finally:
        go.set()
    await finish_run(chat.pk, answers=2)
    rows = await messages_of(chat.pk)
    assert [(m.role, m.content) for m in rows if m.role == "user"] == [("user", "first"), ("user", "queued")]
    assert [m.status for m in rows if m.role == "assistant"] == [Message.Status.COMPLETE] * 2
    await communicator.disconnect()


async def test_it_regenerates_the_last_answer_and_keeps_the_old_one_for_reviewers(
    alice, chat, runtime
) -> None:
    communicator, _, _ = await connect(alice, chat.pk)
    await communicator.send_to(text_data=json.dumps({"action": "send", "text": "first"}))
    await finish_run(chat.pk)
    await drain(communicator)
    await communicator.send_to(text_data=json.dumps({"action": "regenerate"}))
    await finish_run(chat.pk, answers=2)
    frames = "".join(await drain(communicator))
    rows = await messages_of(chat.pk)
    old, new = rows[1], rows[2]
    assert old.superseded_at is not None and new.superseded_at is None
    assert f'id="m-{old.pk}" hx-swap-oob="delete"' in frames
    assert [m.role for m in rows if m.superseded_at is None] == ["user", "assistant"]
    await communicator.disconnect()


async def test_it_edits_and_resends_hiding_the_later_messages(alice, chat, runtime) -> None:
    communicator, _, _ = await connect(alice, chat.pk)
    for n, text in enumerate(("one", "two"), start=1):
        await communicator.send_to(text_data=json.dumps({"action": "send", "text": text}))
        await finish_run(chat.pk, answers=n)
    first_user, first_answer, second_user, second_answer = await messages_of(chat.pk)
    await communicator.send_to(
        text_data=json.dumps({"action": "edit", "message_id": str(second_user.pk), "text": "TWO"})
    )
    await finish_run(chat.pk, answers=3)
    rows = await messages_of(chat.pk)
    visible = [(m.role, m.content) for m in rows if m.superseded_at is None]
    assert visible[:3] == [("user", "one"), ("assistant", first_answer.content), ("user", "TWO")]
    assert len(visible) == 4
    hidden = {m.pk for m in rows if m.superseded_at is not None}
    assert hidden == {second_user.pk, second_answer.pk}  # kept for reviewers
    await communicator.disconnect()


async def test_it_says_waiting_n_ahead_while_the_model_is_busy(alice, chat, runtime) -> None:
    # Alice's own earlier jobs (fair order is FIFO within a user): one running, one waiting.
    jobs = [blocker(runtime.model, f"user-{alice.pk}") for _ in range(2)]
    try:
        communicator, _, _ = await connect(alice, chat.pk)
        await communicator.send_to(text_data=json.dumps({"action": "send", "text": "my turn?"}))
        frames = "".join(await receive_until(communicator, "waiting, 1 ahead"))
        assert 'class="msg-status"' in frames
    finally:
        for job in jobs:
            job.cancel()
    await receive_until(communicator, "writing…", timeout=30)  # its turn came
    await finish_run(chat.pk)
    await communicator.disconnect()


async def test_it_finishes_the_answer_after_the_tab_closes(alice, chat, runtime) -> None:
    chat.max_tokens = 40
    await sync_to_async(chat.save)()
    jobs = [blocker(runtime.model)]  # the answer is still to come when the tab closes
    try:
        communicator, _, _ = await connect(alice, chat.pk)
        await communicator.send_to(text_data=json.dumps({"action": "send", "text": "bye"}))
        await receive_until(communicator, "waiting")
        await communicator.disconnect()
    finally:
        jobs[0].cancel()
    await finish_run(chat.pk)
    answer = (await messages_of(chat.pk))[-1]
    assert answer.status == Message.Status.COMPLETE and answer.completion_tokens


async def test_a_conversation_without_its_own_max_tokens_gets_the_sites_default(
    alice, chat, runtime, settings
) -> None:
    settings.CHAT_DEFAULT_MAX_TOKENS = 3
    chat.temperature, chat.max_tokens = 0, None  # (this module's chat has its own: 6)
    await chat.asave(update_fields=["temperature", "max_tokens"])
    communicator, _, _ = await connect(alice, chat.pk)
    await communicator.send_to(text_data=json.dumps({"action": "send", "text": "Hello"}))
    await finish_run(chat.pk)
    answer = (await messages_of(chat.pk))[-1]
    assert answer.params["max_tokens"] == 3 and answer.completion_tokens <= 3
    await communicator.disconnect()
    # The settings form shows the default in use, and saving it unchanged keeps "the default".
    client = Client()
    await sync_to_async(client.force_login)(alice)
    page = await sync_to_async(client.get)(reverse("chat:conversation", args=[chat.pk]))
    assert re.search(r'name="max_tokens"[^>]*value="3"', page.content.decode())
    saved = await sync_to_async(client.post)(
        reverse("chat:settings", args=[chat.pk]), {"system_prompt": "", "temperature": "0", "max_tokens": "3"}
    )
    assert saved.status_code in (200, 302)
    await sync_to_async(chat.refresh_from_db)()
    assert chat.max_tokens is None


async def test_it_stops_on_disconnect_when_the_site_says_so(alice, chat, runtime, settings) -> None:
    settings.CHAT_STOP_ON_DISCONNECT = True
    chat.max_tokens = 400
    await sync_to_async(chat.save)()
    jobs = [blocker(runtime.model)]  # so that the answer is still waiting when the tab closes
    try:
        communicator, _, _ = await connect(alice, chat.pk)
        await communicator.send_to(text_data=json.dumps({"action": "send", "text": "bye"}))
        await receive_until(communicator, "waiting")
        await communicator.disconnect()
        await finish_run(chat.pk)
    finally:
        jobs[0].cancel()
    answer = (await messages_of(chat.pk))[-1]
    assert answer.role == "assistant" and answer.status == Message.Status.CANCELLED


async def test_it_lets_people_edit_only_their_own_messages(alice, bob, chat, runtime) -> None:
    message = await sync_to_async(actions.add_user_message)(chat, "alice wrote this", author=alice)
    communicator, _, _ = await connect(bob, chat.pk)
    await communicator.send_to(
        text_data=json.dumps({"action": "edit", "message_id": message.pk, "text": "bob's words"})
    )
    assert "You can edit only your own messages." in await communicator.receive_from(timeout=5)
    rows = await messages_of(chat.pk)
    assert [(m.content, m.superseded_at) for m in rows] == [("alice wrote this", None)]
    await communicator.disconnect()


@pytest.mark.parametrize("first", [True, False], ids=["first message", "later message"])
async def test_a_new_message_reaches_its_authors_page_as_rendered_in_its_write(
    alice, bob, chat, runtime, monkeypatch, first
) -> None:
    """The author's socket forwards the new message's HTML rendered once with its write (as a new
    reply's is), instead of reading the row and rendering it again while the slot evaluates the
    prompt; a teammate's socket reads and renders it for its own viewer (no Edit). Either way the
    page gets what the stored row renders for that viewer."""
    from conversations import consumers
    from conversations.consumers import ChatConsumer, message_fragment

    chat.temperature, chat.max_tokens = 0, 4
    await chat.asave(update_fields=["temperature", "max_tokens"])
    if not first:
        await sync_to_async(actions.add_user_message)(chat, "an earlier message", author=alice)
    read_for: list[tuple[int, int]] = []  # (viewer, message id) of each socket's read of a message
    read = ChatConsumer.__dict__["_message_fragment"]  # (unbound: database_sync_to_async binds)

    async def counted(self, message_id):
        read_for.append((self.user.pk, int(message_id)))
        return await read(self, message_id)

    monkeypatch.setattr(consumers.ChatConsumer, "_message_fragment", counted)
    author, _, _ = await connect(alice, chat.pk)
    watcher, _, _ = await connect(bob, chat.pk)
    await author.send_to(text_data=json.dumps({"action": "send", "text": "Hello *there*"}))
    await finish_run(chat.pk)
    stored = await sync_to_async(
        lambda: Message.objects.select_related("author").get(conversation=chat, content="Hello *there*")
    )()
    frames = {alice.pk: await drain(author), bob.pk: await drain(watcher)}
    for viewer in (alice, bob):
        expected = await sync_to_async(message_fragment)(stored, chat, viewer, append=True)
        assert expected in frames[viewer.pk], viewer.username
    assert f'id="m-{stored.pk}-edit"' in "".join(frames[alice.pk])  # hers to edit
    assert f'id="m-{stored.pk}-edit"' not in "".join(frames[bob.pk])
    assert [v for v, m in read_for if m == stored.pk] == [bob.pk]  # the author's socket read nothing
    await author.disconnect()
    await watcher.disconnect()


async def test_a_new_title_reaches_every_page_without_checking_access_again(
    alice, bob, chat, runtime, monkeypatch
) -> None:
    """A first message names the conversation: every page open on it shows the new title, and no
    socket checks its access again for it (a title changes no one's access; the start of the reply
    checks the sender's). A change that can take access away still makes every socket check."""
    from conversations import consumers

    chat.temperature, chat.max_tokens = 0, 4
    await chat.asave(update_fields=["temperature", "max_tokens"])
    checked: list[int] = []  # the user of each socket's access check
    check = consumers.ChatConsumer._access_now

    def counted(self):
        checked.append(self.user.pk)
        return check(self)

    monkeypatch.setattr(consumers.ChatConsumer, "_access_now", counted)
    author, _, _ = await connect(alice, chat.pk)
    watcher, _, _ = await connect(bob, chat.pk)
    await author.send_to(text_data=json.dumps({"action": "send", "text": "A <i>title</i>"}))
    await finish_run(chat.pk)
    for socket in (author, watcher):
        frames = "".join(await drain(socket))
        assert '<h1 hx-swap-oob="true" id="conv-title"' in frames
        assert 'data-title="A &lt;i&gt;title&lt;/i&gt;"' in frames  # the new title, escaped
    assert checked == [alice.pk]  # the reply's start, only
    await sync_to_async(actions.set_visibility)(chat, Conversation.Visibility.PRIVATE)
    assert (await watcher.receive_output(timeout=5))["type"] == "websocket.send"  # told, then closed
    assert (await watcher.receive_output(timeout=5)) == {"type": "websocket.close", "code": 4403}
    assert sorted(checked[1:]) == sorted([alice.pk, bob.pk])
    await author.disconnect()


@pytest.mark.parametrize("viewers", [1, 4])
async def test_it_renders_each_delta_once_off_the_event_loop_whatever_the_viewers(
    alice, bob, chat, runtime, monkeypatch, viewers
) -> None:
    """The reply's runner renders each delta once (``StreamRender.step``), in a render thread (the
    first, a few words on the way to the first token, on the event loop), and every viewer's
    socket forwards that HTML: no other markdown is parsed on the event loop, the renders
    are as many as the deltas a viewer gets, with one viewer as with four, and the deltas applied
    in order (as htmx does) leave the answer's body equal to its whole render."""
    chat.temperature, chat.max_tokens = 0, 60
    await chat.asave(update_fields=["temperature", "max_tokens"])
    monkeypatch.setattr(runner, "PUBLISH_INTERVAL", 0.0)  # a delta at every wake: many of them
    monkeypatch.setattr(runner, "PUBLISH_PIECES", 1)
    adds: list[str] = []
    step = StreamRender.step

    def counted_step(self, more):
        adds.append(more)
        return step(self, more)

    monkeypatch.setattr(StreamRender, "step", counted_step)
    md = render._markdown()
    parse, parsed_in = md.parse, []

    def counted_parse(src, env=None):
        parsed_in.append((threading.get_ident(), len(adds)))  # (thread, the delta's number)
        return parse(src, env)

    monkeypatch.setattr(md, "parse", counted_parse)
    sockets = [(await connect(alice if i % 2 == 0 else bob, chat.pk))[0] for i in range(viewers)]
    await sockets[0].send_to(text_data=json.dumps({"action": "send", "text": "Hello"}))
    await finish_run(chat.pk)
    _, answer = await messages_of(chat.pk)
    assert answer.content and answer.status == Message.Status.COMPLETE
    delta = f'id="m-{answer.pk}-open"'
    drained = await asyncio.gather(*(drain(socket) for socket in sockets))  # at once: one quiet wait
    seen = [[f for f in frames if f"m-{answer.pk}" in f] for frames in drained]
    on_loop = {n for thread, n in parsed_in if thread == threading.get_ident()}
    assert on_loop <= {1}  # nothing but the first delta rendered on the event loop
    assert "".join(adds) == answer.content
    whole = normal(str(render_markdown(answer.content)))
    for frames in seen:
        deltas = [i for i, f in enumerate(frames) if delta in f]
        assert len(deltas) == len(adds) >= 1  # one render per delta, whatever the viewers
        page = Page('<div id="messages"></div>')
        for frame in frames[: deltas[-1] + 1]:  # the answer's frames up to its last delta
            page.apply(frame)
        assert page.inner(f"m-{answer.pk}-body", unwrap=f"m-{answer.pk}-open") == whole
    for socket in sockets:
        await socket.disconnect()


async def test_a_message_takes_one_trip_to_a_database_thread_before_its_job_is_submitted(
    alice, chat, runtime, monkeypatch
) -> None:
    """The user message's write, the team's models, the history and its prompt are one trip (each
    trip is a thread hop on the way to the first token), as the second message of a conversation
    (its model is recorded) and as the first."""
    from conversations.live import replies

    trips: list[str] = []
    real = replies.database_sync_to_async

    def counting(function, *args, **kwargs):  # the real trip, counted
        trips.append(getattr(function, "__name__", repr(function)))
        return real(function, *args, **kwargs)

    monkeypatch.setattr(replies, "database_sync_to_async", counting)
    before_submit: list[list[str]] = []
    scheduler = runtime.model.scheduler
    original = scheduler.asubmit

    async def recording_submit(*args, **kwargs):
        before_submit.append(list(trips))
        return await original(*args, **kwargs)

    monkeypatch.setattr(scheduler, "asubmit", recording_submit)
    communicator, _, _ = await connect(alice, chat.pk)
    for answers, text in enumerate(("first", "second"), start=1):
        trips.clear()
        await communicator.send_to(text_data=json.dumps({"action": "send", "text": text}))
        await finish_run(chat.pk, answers)
    assert [len(t) for t in before_submit] == [1, 1], before_submit
    statuses = [(m.role, m.content if m.role == "user" else m.status) for m in await messages_of(chat.pk)]
    assert statuses == [
        ("user", "first"),
        ("assistant", "complete"),
        ("user", "second"),
        ("assistant", "complete"),
    ]
    await communicator.disconnect()


async def test_a_new_message_is_admitted_first_and_written_with_its_reply(
    alice, chat, runtime, monkeypatch
) -> None:
    """The job is submitted before the message is written (the write is then off the way to the
    first token); the message and its reply's row are then written together."""
    stored_at_submit: list[list[str]] = []
    scheduler = runtime.model.scheduler
    original = scheduler.asubmit

    async def recording_submit(*args, **kwargs):
        stored_at_submit.append([m.role for m in await messages_of(chat.pk)])
        return await original(*args, **kwargs)

    monkeypatch.setattr(scheduler, "asubmit", recording_submit)
    communicator, _, _ = await connect(alice, chat.pk)
    await communicator.send_to(text_data=json.dumps({"action": "send", "text": "hello"}))
    await finish_run(chat.pk)
    assert stored_at_submit == [[]]
    user_message, answer = await messages_of(chat.pk)
    assert (user_message.role, user_message.content, user_message.author_id) == ("user", "hello", alice.pk)
    assert (
        answer.role == "assistant"
        and answer.status == Message.Status.COMPLETE
        and answer.pk > user_message.pk
    )
    await sync_to_async(chat.refresh_from_db)()
    assert chat.title == "hello"
    await communicator.disconnect()


async def test_a_conversations_first_message_writes_nothing_before_its_job_is_submitted(
    alice, chat, runtime, monkeypatch
) -> None:
    """The model a conversation's first reply is read for is recorded with the message and the
    title, beside the prompt's evaluation, not on the way to the job's submission."""
    assert chat.model_id == ""
    stored_at_submit: list[str] = []
    scheduler = runtime.model.scheduler
    original = scheduler.asubmit

    async def recording_submit(*args, **kwargs):
        stored = await Conversation.objects.aget(pk=chat.pk)
        stored_at_submit.append(stored.model_id)
        return await original(*args, **kwargs)

    monkeypatch.setattr(scheduler, "asubmit", recording_submit)
    communicator, _, _ = await connect(alice, chat.pk)
    await communicator.send_to(text_data=json.dumps({"action": "send", "text": "hello"}))
    await finish_run(chat.pk)
    assert stored_at_submit == [""]
    stored = await Conversation.objects.aget(pk=chat.pk)
    assert (stored.model_id, stored.title) == (runtime.model.model_id, "hello")
    await communicator.disconnect()


async def test_a_message_admitted_first_that_finds_a_reply_started_elsewhere_goes_back_to_the_box(
    alice, chat, runtime, monkeypatch
) -> None:
    """Another web process starts a reply between this one's read and its write: nothing is written,
    the job gives its place back, and the text goes back to the composer."""
    from django.utils import timezone

    submitted = []
    scheduler = runtime.model.scheduler
    original = scheduler.asubmit

    async def submit_as_another_process_starts(*args, **kwargs):
        job = await original(*args, **kwargs)
        submitted.append(job)
        await Message.objects.acreate(
            conversation=chat, role="assistant", status=Message.Status.STREAMING, heartbeat_at=timezone.now()
        )
        return job

    monkeypatch.setattr(scheduler, "asubmit", submit_as_another_process_starts)
    busy = blocker(runtime.model)  # the slot is taken: the job waits in the queue until cancelled
    try:
        communicator, _, _ = await connect(alice, chat.pk)
        await communicator.send_to(text_data=json.dumps({"action": "send", "text": "mine"}))
        frames = "".join(await receive_until(communicator, "still in the box"))
    finally:
        busy.cancel()
    assert "mine" in frames  # the composer gets the text back
    rows = [(m.role, m.status) for m in await messages_of(chat.pk)]
    assert rows == [("assistant", Message.Status.STREAMING)]  # the other process's, and nothing of ours
    assert len(submitted) == 1
    ended = await sync_to_async(submitted[0].wait)(10)
    assert ended is not None and ended.reason == "cancelled" and ended.usage.completion_tokens == 0
    await communicator.disconnect()
