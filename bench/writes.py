"""The rows a reply writes beside its prompt's evaluation, on PostgreSQL: what they cost.

Run with nothing else on the machine: ``.venv/bin/python -m bench.writes``. In a fresh PostgreSQL
database (made and dropped here), in this process, it writes ``--writes`` times each way, in turn:

- a conversation's first message with its streaming reply (``post_user_message_with_reply``): the
  one statement and the general path (as SQLite's);
- an API call's log rows (``start_api_call``, 2 messages, 1 reply), both ways;
- a new message's event at its author's socket: the row read and rendered, or the HTML the write
  rendered forwarded (and that render's cost in the write);
- the history read before a reply's admission: the ORM's query built each time, or built once.

For each: the median wall time, the writing thread's CPU and the database backend's CPU (from
``/proc``), and the statements. These run on the other core while the model evaluates the prompt,
so their CPU is taken from the prefill. The thread's CPU includes the events' trip to an in-memory
channel layer (an event loop of its own per trip here, as no loop runs in this thread: more than in
a server). Writes bench/results/writes.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from bench.drill import postgres_database
from bench.run import ROOT


def backend_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--writes", type=int, default=300, help="writes of each kind, each way")
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "writes.json"))
    args = parser.parse_args(argv)
    with postgres_database(args.postgres) as url:
        os.environ.update(
            DJANGO_SETTINGS_MODULE="chatsite.settings",
            DATABASE_URL=url,
            CHAT_DATA_DIR=os.environ.get("CHAT_DATA_DIR", str(ROOT / ".data")),
        )
        os.environ.pop("REDIS_URL", None)  # the in-memory channel layer
        results = measure(args.writes)
        from django.db import connections

        connections.close_all()
    for label, row in results.items():
        print(
            f"{label:<48} wall {row['wall_ms']:6.2f} ms   thread CPU {row['thread_cpu_ms']:5.2f} ms"
            f"   database CPU {row['database_cpu_ms']:5.2f} ms   statements {row['statements']}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out}")


def measure(writes: int) -> dict[str, dict[str, float]]:
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection, transaction

    from conversations import actions
    from conversations.models import Message

    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create_user("bench")
    team = actions.create_team("bench", admin=user)
    key, _ = actions.create_api_key(user, team, "bench")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (backend,) = cursor.fetchone()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the sky?"}]

    def new_conversation():
        chat = actions.start_conversation(user, team, model_id="")
        chat.model_id = "tiny"  # (as the reply's read sets it, unwritten)
        return chat

    def first_message(chat) -> int:
        _, reply = actions.post_user_message_with_reply(chat, "Hello there", user, params={}, prompt_tokens=9)
        return reply.pk

    def api_call(_) -> int:
        call = actions.start_api_call(
            key, model_id="tiny", messages=messages, params={}, n=1, prompt_tokens=9
        )
        return call.replies[0].pk

    results = {}
    kinds = (
        ("websocket: message + reply + conversation", new_conversation, first_message),
        ("/v1: a call's log rows", lambda: None, api_call),
    )
    for label, prepare, write in kinds:
        for way in ("one statement", "general path"):
            general = way == "general path"
            results[f"{label}, {way}"] = timed(
                lambda made, write=write, general=general: write_once(write, made, general, transaction),
                writes,
                backend,
                prepare=prepare,
                after=lambda reply: Message.objects.filter(pk=reply).update(status=Message.Status.COMPLETE),
            )
    results.update(author_page(writes, new_conversation, backend))
    results.update(history_read(writes, new_conversation, backend))
    return results


def history_read(writes: int, new_conversation, backend: int) -> dict[str, dict[str, float]]:
    """The history a reply's prompt is built from (``queries.prompt_messages``' read, on the way
    to the first token), 12 messages: the ORM's query built for each read (as before) or its SQL
    built once (``queries._history``)."""
    from django.contrib.auth import get_user_model

    from conversations import actions, queries
    from conversations.models import Message

    chat = new_conversation()
    user = get_user_model().objects.get(username="bench")
    for i in range(6):
        actions.add_user_message(chat, f"Question {i}: what is the sky made of?", author=user)
        answer = Message(conversation=chat, role=Message.Role.ASSISTANT, content=f"Answer {i}: air.")
        answer.token_ids = list(range(40))
        answer.save()

    def built_each_time(_=None) -> list:
        return list(queries.visible_messages(chat).values_list(*queries._HISTORY_COLUMNS))

    def built_once(_=None) -> list:
        return queries._history(chat.pk)

    assert built_each_time() == built_once()
    ways = (
        ("the history read: its query built each time", built_each_time),
        ("the history read: its SQL built once", built_once),
    )
    return {label: timed(work, writes, backend) for label, work in ways}


def timed(
    work, times: int, backend: int, prepare=lambda: None, after=lambda result: None
) -> dict[str, float]:
    """``work``'s statements (one call), then its medians over ``times`` calls: wall, this thread's
    CPU, and the database backend's CPU (the mean: clock ticks). ``work`` is given what ``prepare``
    made for it, and ``after`` what it returned, both untimed."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    made = prepare()
    with CaptureQueriesContext(connection) as ran:
        work(made)
    walls, threads, database = [], [], []
    for _ in range(times):
        made = prepare()
        b0, t0, c0 = backend_seconds(backend), time.perf_counter(), time.thread_time()
        result = work(made)
        walls.append(time.perf_counter() - t0)
        threads.append(time.thread_time() - c0)
        database.append(backend_seconds(backend) - b0)
        after(result)
    return {
        "wall_ms": statistics.median(walls) * 1e3,
        "thread_cpu_ms": statistics.median(threads) * 1e3,
        "database_cpu_ms": statistics.mean(database) * 1e3,
        "statements": len(ran),
    }


def author_page(writes: int, new_conversation, backend: int) -> dict[str, dict[str, float]]:
    """What a new message's ``chat.message`` costs its author's socket, beside the prompt's
    evaluation: read and rendered from the database (as every socket did before 6d3ee9c, and a
    teammate's still does) or forwarded as rendered once in the write (and what that render adds
    to the write)."""
    from django.contrib.auth import get_user_model

    from conversations import actions
    from conversations.consumers import message_fragment, placed
    from conversations.models import Message

    chat = new_conversation()
    user = get_user_model().objects.get(username="bench")
    message, _ = actions.post_user_message_with_reply(chat, "Hello *there*", user, params={}, prompt_tokens=9)
    event = actions._new_message_event(chat, message)

    def read_and_render(_=None) -> str:
        row = Message.objects.select_related("author").filter(pk=message.pk).first()  # the socket's read
        return message_fragment(row, chat, user, append=True)

    def rendered(_=None) -> dict:
        return actions._new_message_event(chat, message)

    def forward(_=None) -> str:
        return placed(event["author_html"], append=True)

    assert read_and_render() == forward()  # the same fragment either way
    ways = (
        ("the author's page: the message read and rendered", read_and_render),
        ("the author's page: the message forwarded", forward),
        ("the write: the message rendered for its author", rendered),
    )
    return {label: timed(work, writes, backend) for label, work in ways}


def write_once(write, made, general: bool, transaction) -> int:
    """One write, by its one statement or by the general path as a server runs it: the message's
    outside a transaction (the one statement turned off: 7 statements, as before 5401a40), the
    call's in the caller's transaction (as /v1 wrote it before 5401a40)."""
    from conversations import actions

    if not general:
        return write(made)
    if write.__name__ == "first_message":
        at_once = actions._post_with_reply_at_once
        actions._post_with_reply_at_once = lambda *args: None
        try:
            return write(made)
        finally:
            actions._post_with_reply_at_once = at_once
    with transaction.atomic():
        return write(made)


if __name__ == "__main__":
    main()
