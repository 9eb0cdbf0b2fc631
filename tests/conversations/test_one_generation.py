"""One generation per conversation, across web processes: the database holds at most one streaming
reply per conversation (and choice), so two processes that both passed the page's busy check cannot
both start one. A stale streaming row (its process died) does not block the conversation.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.db import connection, transaction
from django.utils import timezone

from conversations import actions, sidebar
from conversations.live import replies
from conversations.models import Conversation, Message
from inference.sampling import SamplingParams
from tests.chat_runtime import serving, tiny_chat_model

ROOT = Path(__file__).resolve().parents[2]
BUSY = "A reply is being written in this conversation"


@pytest.fixture
def chat(alice, alpha) -> Conversation:
    return actions.start_conversation(alice, alpha, visibility="team", max_tokens=4)


def streaming_rows(conversation: Conversation) -> list[Message]:
    return list(conversation.messages.filter(status=Message.Status.STREAMING))


def race(conversation_id: int, env: dict[str, str], mode: str = "race") -> list[dict[str, object]]:
    """Two processes start a reply in the conversation at the same moment; their answers."""
    racers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.race_start", mode, str(conversation_id)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for racer in racers:  # both have started Django and read the conversation
            assert racer.stdout.readline().strip() == "ready"
        for racer in racers:
            racer.stdin.write("go\n")
            racer.stdin.flush()
        return [json.loads(racer.communicate(timeout=60)[0]) for racer in racers]
    finally:
        for racer in racers:
            if racer.poll() is None:
                racer.kill()


@pytest.mark.slow  # two processes
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("mode", ["race", "race-message"])
def test_it_lets_one_of_two_processes_starting_at_once_write_the_reply(chat, tmp_path, mode) -> None:
    """Two web processes, each with its own database connection, start a reply in the same
    conversation at once: one gets the streaming row, the other is told the conversation is busy.
    ``race-message``: each with a new message written with its reply (on PostgreSQL in one
    statement): the other's message is not written either."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    db = connection.settings_dict
    if connection.vendor == "postgresql":  # the test database, which the test's data is in
        env["DATABASE_URL"] = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
        conversation_id = chat.pk
    else:  # the test database is in memory: the racers share a database file of their own
        env["CHAT_DATA_DIR"] = str(tmp_path)
        setup = [sys.executable, "-m", "tests.race_start", "setup"]
        made = subprocess.run(setup, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert made.returncode == 0, made.stderr
        conversation_id = int(made.stdout)
    answers = race(conversation_id, env, mode)
    started = [a["started"] for a in answers if "started" in a]
    refused = [a["refused"] for a in answers if "refused" in a]
    assert len(started) == 1 and len(refused) == 1, answers
    assert BUSY in refused[0]
    if connection.vendor == "postgresql":
        assert [m.pk for m in streaming_rows(chat)] == started
        if mode == "race-message":
            assert chat.messages.filter(role=Message.Role.USER).count() == 1


@pytest.mark.django_db(transaction=True)
def test_it_still_starts_the_n_choices_of_one_api_call(alice, alpha) -> None:
    key, _ = actions.create_api_key(alice, alpha)
    call = actions.start_api_call(
        key, model_id="m", messages=[{"role": "user", "content": "hi"}], params={}, n=3, prompt_tokens=2
    )
    assert sorted(m.choice_index for m in streaming_rows(call.conversation)) == [0, 1, 2]


@pytest.mark.django_db(transaction=True)
def test_it_interrupts_a_dead_processs_stale_row_when_a_reply_starts(chat) -> None:
    (stale,) = actions.start_assistant_messages(chat, 1, params={}, prompt_tokens=3)
    Message.objects.filter(pk=stale.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    (new,) = actions.start_assistant_messages(chat, 1, params={}, prompt_tokens=3)
    stale.refresh_from_db()
    assert stale.status == Message.Status.INTERRUPTED
    assert [m.pk for m in streaming_rows(chat)] == [new.pk]


@pytest.mark.django_db(transaction=True)
def test_a_new_message_and_its_reply_are_written_in_one_statement_on_postgresql_and_a_stale_row_still_ends(
    chat, alice
) -> None:
    """The write that runs beside the prompt's evaluation (a message admitted first). On
    PostgreSQL one statement: the lock, the busy check, the two rows and the conversation's time
    (7 statements before). On SQLite seven: begin, the lock, the busy check (which also finds
    stale rows), the two rows, the conversation's time, commit; no savepoint, no query for stale
    rows when there are none. With a dead process's row, that row is interrupted and the reply
    starts all the same; with a live one, it is busy and nothing is written."""
    from django.test.utils import CaptureQueriesContext

    actions.rename(chat, "Named")  # (a first message names the conversation: one more statement)
    with CaptureQueriesContext(connection) as queries:
        _, first = actions.post_user_message_with_reply(chat, "Hi", alice, params={}, prompt_tokens=3)
    expected = 1 if connection.vendor == "postgresql" else 7
    assert len(queries) == expected, [q["sql"][:60] for q in queries]
    Message.objects.filter(pk=first.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    _, second = actions.post_user_message_with_reply(chat, "Again", alice, params={}, prompt_tokens=3)
    first.refresh_from_db()
    assert first.status == Message.Status.INTERRUPTED
    assert [m.pk for m in streaming_rows(chat)] == [second.pk]
    with pytest.raises(actions.Busy):  # a fresh row: busy, and nothing written
        actions.post_user_message_with_reply(chat, "Third", alice, params={}, prompt_tokens=3)
    assert chat.messages.filter(content="Third").count() == 0
    assert [m.content for m in chat.messages.order_by("pk")] == ["Hi", "", "Again", ""]


ROW_FIELDS = [f.attname for f in Message._meta.concrete_fields if f.attname not in ("id", "conversation_id")]


def written_rows(conversation: Conversation) -> list[dict[str, object]]:
    """The conversation's rows as stored, without what differs between two writes of the same."""
    rows = list(conversation.messages.order_by("pk").values(*ROW_FIELDS))
    for row in rows:
        assert row.pop("created") is not None
        row["heartbeat_at"] = row["heartbeat_at"] is not None
    return rows


@pytest.mark.django_db(transaction=True)
def test_the_one_statement_writes_and_announces_what_the_general_path_does(alice, alpha) -> None:
    """The same message and reply written the two ways (on PostgreSQL outside a transaction, one
    statement; inside one, the general path): the same rows, the same conversation row, the same
    events in the same order to the conversation's page and to the lists."""
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    params = {"model": "tiny", "temperature": 0.5, "max_tokens": 9}

    def written(inside_a_transaction: bool):
        chat = actions.start_conversation(alice, alpha, visibility="team", model_id="")
        chat.model_id = "tiny"  # as the reply's read sets it, unwritten

        async def listen() -> str:
            channel = await layer.new_channel()
            for group in (
                actions.group_name(chat.pk),
                sidebar.user_group(alice.pk),
                sidebar.team_group(alpha.pk),
            ):
                await layer.group_add(group, channel)
            return channel

        channel = async_to_sync(listen)()
        if inside_a_transaction:
            with transaction.atomic():
                message, reply = actions.post_user_message_with_reply(
                    chat, "  Hello   there ", alice, params=params, prompt_tokens=7
                )
        else:
            message, reply = actions.post_user_message_with_reply(
                chat, "  Hello   there ", alice, params=params, prompt_tokens=7
            )
        events = []
        while True:
            try:
                event = async_to_sync(asyncio.wait_for)(layer.receive(channel), 0.05)
            except TimeoutError:
                break
            # The same but for the ids: a message's HTML (the reply's, and the new message's as its
            # author sees it) names it by its id.
            mid = event.get("message_id")
            events.append(
                {
                    k: (
                        v - chat.pk
                        if k == "conversation_id"
                        else v.replace(f'"m-{mid}', '"m-#').replace(f'value="{mid}"', 'value="#"')
                        if k in ("html", "author_html")
                        else v
                    )
                    for k, v in event.items()
                    if k != "message_id"
                }
            )
        stored = Conversation.objects.get(pk=chat.pk)
        assert (message.pk, reply.pk) == tuple(chat.messages.order_by("pk").values_list("pk", flat=True))
        assert chat.title == stored.title
        return written_rows(chat), (stored.title, stored.model_id), events

    one_way, other_way = written(False), written(True)
    assert one_way == other_way
    rows, conversation_row, events = one_way
    assert [(r["role"], r["status"], r["content"]) for r in rows] == [
        ("user", "complete", "  Hello   there "),
        ("assistant", "streaming", ""),
    ]
    assert conversation_row == ("Hello there", "tiny")
    assert [e["type"] for e in events] == [
        "chat.message",
        "chat.conversation",
        "list.changed",
        "list.changed",
        "chat.message",
    ]


@pytest.mark.django_db(transaction=True)
def test_a_first_message_updates_its_conversation_once_with_its_title_and_model(chat, alice) -> None:
    """The reply's read names the model and writes nothing; the message's write records it with
    the title and the time in one UPDATE (three before: the model, in series before the job was
    submitted, then the time and the title)."""
    from django.test.utils import CaptureQueriesContext

    from conversations.live import replies

    with CaptureQueriesContext(connection) as queries:
        replies._read_for_reply(chat, None, "Hi")
    named = chat.model_id
    assert named and not [q for q in queries if not q["sql"].lstrip().upper().startswith("SELECT")]
    with CaptureQueriesContext(connection) as queries:
        actions.post_user_message_with_reply(chat, "Hi", alice, params={}, prompt_tokens=3)
    # (On PostgreSQL the UPDATE is part of the write's one statement.)
    updates = [q["sql"] for q in queries if 'UPDATE "conversations_conversation"' in q["sql"]]
    assert len(updates) == 1, updates
    chat.refresh_from_db()
    assert (chat.title, chat.model_id) == ("Hi", named)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    with tiny_chat_model(
        tmp_path_factory.mktemp("tiny-one-generation"), context_length=4096, queue_max=4
    ) as model:
        yield model


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_it_answers_busy_to_the_second_process_and_keeps_its_message(
    alice, bob, chat, tiny_model
) -> None:
    """Both web processes committed their user message (neither saw a streaming row yet); the first
    starts the reply, the second is told the conversation is busy, its message is kept as
    unanswered (Retry) and its job does not run."""
    # Another user's long job holds the only slot, so the first reply is still streaming (queued)
    # when the second process tries.
    bias = {i: -100.0 for i in tiny_model.tokenizer.special_ids}
    prompt = tiny_model.prompt_ids([{"role": "user", "content": "Tell me a story."}])
    blocker = tiny_model.scheduler.submit(
        prompt, SamplingParams(max_tokens=4000, logit_bias=bias), user_key="x"
    )
    with serving(tiny_model):
        first = await sync_to_async(actions.post_user_message)(chat, "from process A", alice)
        second = await sync_to_async(actions.post_user_message)(chat, "from process B", bob)
        submitted = []
        scheduler = tiny_model.scheduler
        original = scheduler.asubmit

        async def recording_submit(*args, **kwargs):
            job = await original(*args, **kwargs)
            submitted.append(job)
            return job

        scheduler.asubmit = recording_submit
        try:
            try:
                # _generate is what each process runs after its own (per-process) busy check.
                await replies._generate(alice, chat, first)
                with pytest.raises(replies.ChatError, match=BUSY):
                    await replies._generate(bob, chat, second)
            finally:
                del scheduler.asubmit
            # Looked at while the blocker still holds the slot: once it goes, the first reply (a
            # few tokens) can end before these lines run on a busy machine.
            rows = await sync_to_async(streaming_rows)(chat)
            assert len(rows) == 1 and len(submitted) == 2
            assert submitted[1].cancelled  # the refused job gives its place back
            await sync_to_async(second.refresh_from_db)()
            assert second.status == Message.Status.UNANSWERED and BUSY in second.error
            run = replies.run_of(chat.pk)
            assert run is not None
        finally:
            blocker.cancel()
        await run.wait()
