"""The path of a /v1 call to its first token (issue 15): what it costs besides the model.

In process, with jobs whose events the test emits by hand (as
tests/conversations/api/test_api_streaming.py): the key check's database trips, the first
content chunk's write, and the bench-only trace of the path.
"""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace

import pytest
from channels.db import database_sync_to_async
from django.db import connection
from django.test.utils import CaptureQueriesContext

from conversations import actions, ttft
from conversations.api import http
from conversations.api.completions import FLUSH_INTERVAL, Reply
from conversations.api.protocol import NotFound
from conversations.live import runner
from conversations.models import ApiKey
from inference.jobs import Delta
from tests.conversations.api.test_api_streaming import finished, new_jobs, plain_output, replies_for
from upstreams import permissions

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


def new_key(alice, alpha) -> str:
    _, plain = actions.create_api_key(alice, alpha, name="ttft")
    return plain


@database_sync_to_async
def queries_of_the_key_check(plain: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert actions.authenticate_api_key(plain) is not None
    return len(queries)


async def test_the_key_check_is_one_query(alice, alpha) -> None:
    plain = await database_sync_to_async(new_key)(alice, alpha)
    assert await queries_of_the_key_check(plain) == 1  # key, user, team and membership together


@database_sync_to_async
def key_check_with_models(plain: str, alpha, models: list[str] | None) -> tuple[int, object]:
    from upstreams.models import TeamModels

    if models is not None:
        TeamModels.objects.update_or_create(team=alpha, defaults={"models": models})
    with CaptureQueriesContext(connection) as queries:
        key = actions.authenticate_api_key(plain)
        assert key is not None
        allowed = key.allowed_models  # read with the key: no query of its own
        assert (key.user_id, key.team_id) != (None, None)
    return len(queries), allowed


async def test_the_key_and_its_teams_models_are_one_query(alice, alpha) -> None:
    plain = await database_sync_to_async(new_key)(alice, alpha)
    assert await key_check_with_models(plain, alpha, None) == (1, None)  # no choice: every model
    assert await key_check_with_models(plain, alpha, ["m-1", "m-2"]) == (1, ["m-1", "m-2"])


@database_sync_to_async
def queries_of_logging_a_call(plain: str) -> list[str]:
    key = actions.authenticate_api_key(plain)
    with CaptureQueriesContext(connection) as queries:
        actions.start_api_call(
            key,
            model_id="tiny",
            messages=[{"role": "user", "content": "hi"}],
            params={},
            n=1,
            prompt_tokens=3,
        )
    return [q["sql"] for q in queries]


async def test_the_log_rows_do_not_write_the_keys_last_use(alice, alpha) -> None:
    """The key's row is not written in the call's log transaction (written while the slot
    prefills, committed before the first token goes out): its last use is written at the end."""
    plain = await database_sync_to_async(new_key)(alice, alpha)
    sql = await queries_of_logging_a_call(plain)
    assert sql and not [q for q in sql if ApiKey._meta.db_table in q and "UPDATE" in q.upper()]


async def test_the_keys_last_use_is_written_when_the_call_ends_before_its_last_bytes(alice, alpha) -> None:
    plain = await database_sync_to_async(new_key)(alice, alpha)
    key = await http.authenticate(SimpleNamespace(META={"HTTP_AUTHORIZATION": f"Bearer {plain}"}))  # type: ignore[arg-type]
    messages = await replies_for(alice, alpha, 1)
    jobs = new_jobs(1)
    run = runner.start(messages[0].conversation_id, jobs, messages)
    reply = Reply("chatcmpl-x", "tiny", 3, run, plain_output(1))
    reply.key_use = http.note_key_use(key, run)
    stream = reply.stream(include_usage=False)
    await anext(stream)
    jobs[0].emit(Delta("Hi", (5,)))
    await anext(stream)
    assert (await ApiKey.objects.aget(pk=key.pk)).last_used_at is None  # not on the way
    jobs[0].emit(finished("stop", "Hi", 1))
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].endswith(b"data: [DONE]\n\n")
    assert (await ApiKey.objects.aget(pk=key.pk)).last_used_at is not None
    # Within the minute, the next call of the key has nothing to write: no task at all.
    again = await http.authenticate(SimpleNamespace(META={"HTTP_AUTHORIZATION": f"Bearer {plain}"}))  # type: ignore[arg-type]
    assert http.note_key_use(again, run) is None


async def test_the_key_comes_with_its_teams_models_and_the_model_check_uses_them(alice, alpha) -> None:
    plain = await database_sync_to_async(new_key)(alice, alpha)
    request = SimpleNamespace(META={"HTTP_AUTHORIZATION": f"Bearer {plain}"})
    key = await http.authenticate(request)  # type: ignore[arg-type]
    assert key.allowed_models is None  # the team has no choice of models: all of them
    # The check reads what came with the key, not the database (which allows every model).
    key.allowed_models = ["only-this-one"]
    with pytest.raises(NotFound):
        await permissions.check(key, {"model": "another"})
    await permissions.check(key, {"model": "only-this-one"})


async def test_the_first_content_chunk_is_not_held_back(alice, alpha) -> None:
    """Writes are paced (FLUSH_INTERVAL) so that a fast stream does not cost a write per token, but
    the first text goes out as soon as it exists, even right after the role chunk."""
    messages = await replies_for(alice, alpha, 1)
    jobs = new_jobs(1)
    run = runner.start(messages[0].conversation_id, jobs, messages)
    stream = Reply("chatcmpl-x", "tiny", 3, run, plain_output(1)).stream(include_usage=False)
    await anext(stream)  # the role chunk
    waiting = asyncio.ensure_future(anext(stream))  # as the server does: it asks for more at once
    for _ in range(5):  # let the stream run until it waits for an event (nothing else runs)
        await asyncio.sleep(0)
    assert not waiting.done()
    start = time.monotonic()
    jobs[0].emit(Delta("Hi", (5,)))
    assert b'"Hi"' in await waiting
    assert time.monotonic() - start < FLUSH_INTERVAL / 2
    jobs[0].emit(finished("stop", "Hi", 1))
    assert [chunk async for chunk in stream][-1].endswith(b"data: [DONE]\n\n")


async def test_the_trace_records_the_path_when_it_is_on(alice, alpha, settings, tmp_path) -> None:
    settings.CHAT_TTFT_TRACE = str(tmp_path / "ttft.jsonl")
    messages = await replies_for(alice, alpha, 1)
    jobs = new_jobs(1)
    trace = ttft.begin("v1")
    assert trace is not None
    ttft.mark("auth")
    run = runner.start(messages[0].conversation_id, jobs, messages)
    stream = Reply("chatcmpl-x", "tiny", 3, run, plain_output(1)).stream(include_usage=False)
    await anext(stream)
    jobs[0].emit(Delta("Hi", (5,)))
    await anext(stream)
    jobs[0].emit(finished("stop", "Hi", 1))
    [chunk async for chunk in stream]
    [line] = (tmp_path / "ttft.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["kind"] == "v1" and record["prompt_ids"] == [1, 2, 3]
    marks = record["marks"]
    assert marks["request"] <= marks["auth"] <= marks["first_write"]


async def test_nothing_is_traced_when_it_is_off(settings) -> None:
    settings.CHAT_TTFT_TRACE = ""
    assert ttft.begin("v1") is None


async def test_a_call_takes_two_trips_to_a_thread_before_its_jobs_are_submitted(
    alice, alpha, runtime, monkeypatch
) -> None:
    """The key check, then the prompt (template and tokens) with the limits' reservation: each trip
    to a thread is a hop on the way to the first token (three before: the reservation had its own)."""
    from asgiref.sync import SyncToAsync
    from django.test import AsyncClient

    from conversations.api import completions

    plain = await database_sync_to_async(new_key)(alice, alpha)
    trips: list[str] = []
    real_call = SyncToAsync.__call__

    async def counted(self, *args, **kwargs):
        trips.append(getattr(self.func, "__name__", repr(self.func)))
        return await real_call(self, *args, **kwargs)

    monkeypatch.setattr(SyncToAsync, "__call__", counted)
    at_admission: list[list[str]] = []
    real_admit = completions.admit

    async def admit(*args, **kwargs):
        at_admission.append(list(trips))
        return await real_admit(*args, **kwargs)

    monkeypatch.setattr(completions, "admit", admit)
    at_view: list[int] = []  # the trips made before the view (the middleware's and Django's own)
    real_begin = ttft.begin
    monkeypatch.setattr(ttft, "begin", lambda *a: (at_view.append(len(trips)), real_begin(*a))[1])
    body = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    response = await AsyncClient().post(
        "/v1/chat/completions",
        data=json.dumps(body),
        content_type="application/json",
        headers={"Authorization": f"Bearer {plain}"},
    )
    assert response.status_code == 200, response.content
    (before,) = at_view
    assert [t[before:] for t in at_admission] == [["authenticate_api_key", "_prompt_and_reserve"]]


def logged_call(key: ApiKey, tools: dict | None, inside_a_transaction: bool) -> tuple[int, dict]:
    """An API call logged the two ways; its statements and its rows as stored."""
    from django.db import transaction

    from conversations.models import Conversation

    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "  What   is\nit? "},
        {"role": "assistant", "content": "A test.", "name": "bot"},
        {"role": "user", "content": "And now?"},
    ]
    params = {"temperature": 0.3, "max_tokens": 7, "n": 2}

    def log():
        return actions.start_api_call(
            key,
            model_id="tiny",
            messages=messages,
            params=params,
            n=2,
            prompt_tokens=11,
            request_user="u-1",
            tools=tools,
        )

    with CaptureQueriesContext(connection) as queries:
        if inside_a_transaction:
            with transaction.atomic():
                call = log()
        else:
            call = log()
    stored = Conversation.objects.get(pk=call.conversation.pk)
    conversation = {
        f.attname: getattr(stored, f.attname)
        for f in Conversation._meta.concrete_fields
        if f.attname not in ("id", "created", "updated")
    }
    rows = list(stored.messages.order_by("pk").values())
    assert [r["id"] for r in rows[-2:]] == [r.pk for r in call.replies]
    assert all(r.conversation_id == stored.pk for r in call.replies)
    for row in rows:
        del row["id"], row["conversation_id"], row["created"]
        row["heartbeat_at"] = row["heartbeat_at"] is not None
    return len(queries), {"conversation": conversation, "messages": rows}


@database_sync_to_async
def logged_both_ways(alice, alpha, tools: dict | None):
    key, _ = actions.create_api_key(alice, alpha, name="both ways")
    return logged_call(key, tools, False), logged_call(key, tools, True)


@pytest.mark.parametrize("tools", [None, {"tools": [{"type": "function", "function": {"name": "f"}}]}])
async def test_the_log_rows_are_one_statement_on_postgresql_and_the_same_either_way(
    alice, alpha, tools
) -> None:
    """On PostgreSQL, outside a transaction, an admitted call's conversation, messages, replies
    (and the tools asked for) are written in one statement (5 before, and 6 with tools); the rows
    are those the general path writes, which SQLite and a caller's transaction use."""
    (statements, rows), (general_statements, general_rows) = await logged_both_ways(alice, alpha, tools)
    assert rows == general_rows
    assert statements == (1 if connection.vendor == "postgresql" else general_statements)
    assert [(m["role"], m["choice_index"], m["status"]) for m in rows["messages"]] == [
        ("system", 0, "complete"),
        ("user", 0, "complete"),
        ("assistant", 0, "complete"),
        ("user", 0, "complete"),
        ("assistant", 0, "streaming"),
        ("assistant", 1, "streaming"),
    ]
    assert [m["tools"] for m in rows["messages"]] == [None] * 4 + [tools] * 2
    assert rows["conversation"]["title"] == "And now?" and rows["conversation"]["request_user"] == "u-1"
