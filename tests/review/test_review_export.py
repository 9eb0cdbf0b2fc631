"""Exports: JSONL that round-trips, CSV, streaming, audit entries, and the exportlogs command."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from django.core.management import CommandError, call_command
from django.http import StreamingHttpResponse
from django.test import AsyncClient
from django.urls import reverse
from django.utils import timezone

from conversations.models import Conversation, Message
from review import export
from review.models import AuditEntry
from tests.review_data import World, api_call, logged_in


def stored_messages(conversation_id: int) -> list[dict[str, str]]:
    return [
        {"role": m.role, "content": m.content, **({"name": m.name} if m.name else {})}
        for m in Message.objects.filter(conversation_id=conversation_id).order_by("id")
    ]


def jsonl_records(response) -> list[dict]:
    assert isinstance(response, StreamingHttpResponse)
    return [json.loads(line) for line in b"".join(response.streaming_content).decode().splitlines()]


def test_it_round_trips_the_jsonl_export(world: World) -> None:
    api_call(world.keys["bob"], "Pick two numbers", ["3 and 4", "5 and 6"], request_user="u-1")  # n=2
    response = logged_in(world.root).get(reverse("admin:conversations_conversation_export", args=["jsonl"]))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/x-ndjson")
    assert response["Content-Disposition"].startswith('attachment; filename="conversations-')
    records = jsonl_records(response)
    assert len(records) == Conversation.objects.count() == 6
    for record in records:
        meta = record["metadata"]
        assert record["messages"] == stored_messages(meta["id"])
        assert [m["id"] for m in meta["messages"]] == list(
            Message.objects.filter(conversation_id=meta["id"]).order_by("id").values_list("id", flat=True)
        )
    two = next(r for r in records if r["metadata"]["user"] == "u-1")
    assert [m["role"] for m in two["messages"]] == ["system", "user", "assistant", "assistant"]
    assert [m["choice_index"] for m in two["metadata"]["messages"][2:]] == [0, 1]
    assert two["metadata"]["api_key"] == world.keys["bob"].prefix
    assert two["metadata"]["messages"][2]["params"]["top_p"] == 0.9
    assert two["metadata"]["source"] == "api" and two["metadata"]["team"] == "alpha"
    deleted = next(r for r in records if r["metadata"]["id"] == world.conversations["bob_deleted"].pk)
    assert deleted["metadata"]["deleted_at"] is not None


def test_it_exports_the_list_as_filtered_and_searched(world: World) -> None:
    url = reverse("admin:conversations_conversation_export", args=["jsonl"])
    records = jsonl_records(logged_in(world.alice).get(url, {"source__exact": "api", "q": "colour"}))
    assert [r["metadata"]["id"] for r in records] == [world.conversations["bob_api"].pk]
    entry = AuditEntry.objects.get(action=AuditEntry.Action.EXPORT)
    assert entry.actor == world.alice
    assert entry.filters == {"source__exact": ["api"], "q": ["colour"]}
    assert entry.detail == "format=jsonl conversations=1"


def test_it_exports_the_selected_conversations_and_audits_the_selection(world: World) -> None:
    picked = [world.conversations["bob_api"].pk, world.conversations["bob_shared"].pk]
    response = logged_in(world.alice).post(
        reverse("admin:conversations_conversation_changelist"),
        {"action": "export_csv", "_selected_action": picked, "index": 0},
    )
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert {int(r["conversation_id"]) for r in rows} == set(picked)
    assert [r["role"] for r in rows if int(r["conversation_id"]) == picked[0]] == [
        "system",
        "user",
        "assistant",
    ]
    assistant = next(r for r in rows if r["role"] == "assistant" and int(r["conversation_id"]) == picked[0])
    assert (assistant["prompt_tokens"], assistant["completion_tokens"], assistant["content"]) == (
        "12",
        "1",
        "Blue.",
    )
    entry = AuditEntry.objects.get(action=AuditEntry.Action.EXPORT)
    assert sorted(entry.filters["selected"]) == sorted(picked) and "CSV" in entry.object_repr


def test_it_keeps_formulas_out_of_csv_cells(world: World) -> None:
    conversation = api_call(world.keys["bob"], '=HYPERLINK("http://evil")', ["@SUM(1)"])
    lines = "".join(export.csv_lines(Conversation.objects.filter(pk=conversation.pk)))
    rows = list(csv.DictReader(io.StringIO(lines)))
    assert [r["content"] for r in rows] == ["Be brief.", '\'=HYPERLINK("http://evil")', "'@SUM(1)"]


def test_it_streams_a_large_export_in_chunks(world: World, django_assert_max_num_queries) -> None:
    for i in range(25):
        api_call(world.keys["alice"], f"q{i}", ["a"])
    lines = export.jsonl(Conversation.objects.all())
    # A generator: nothing is read until the response is iterated, then a few queries per chunk.
    assert iter(lines) is lines
    export_chunk = export.CHUNK_SIZE
    export.CHUNK_SIZE = 10
    try:
        with django_assert_max_num_queries(2 * 4):  # 4 chunks of ≤ 10, two queries each
            assert len(list(export.jsonl(Conversation.objects.all()))) == 30
    finally:
        export.CHUNK_SIZE = export_chunk


def test_it_streams_under_asgi_in_batches_without_reading_it_all_first(world: World) -> None:
    """Daphne serves the site: the export must be an async iterator there (Django would read a
    sync one whole into a list), and it arrives in several parts."""
    for i in range(120):
        api_call(world.keys["alice"], f"q{i}", ["a"])
    url = reverse("admin:conversations_conversation_export", args=["jsonl"])

    async def fetch() -> tuple[StreamingHttpResponse, list[bytes]]:
        client = AsyncClient()
        await client.aforce_login(world.root)
        response = await client.get(url)
        assert response.is_async
        return response, [part async for part in response.streaming_content]

    response, parts = async_to_sync(fetch)()
    assert response.status_code == 200
    assert len(parts) == 3  # 125 conversations, 50 lines a part
    records = [json.loads(line) for line in b"".join(parts).decode().splitlines()]
    assert len(records) == 125
    assert all(r["messages"] == stored_messages(r["metadata"]["id"]) for r in records)


def test_it_rejects_an_unknown_format(world: World) -> None:
    url = reverse("admin:conversations_conversation_export", args=["xml"])
    assert logged_in(world.root).get(url).status_code == 400
    assert not AuditEntry.objects.exclude(action="key_created").exists()  # the world's keys are audited


# --- exportlogs -----------------------------------------------------------------------------------


def test_it_exports_logs_to_stdout_with_filters(world: World) -> None:
    out = io.StringIO()
    call_command("exportlogs", "--team", "alpha", "--source", "api", stdout=out)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["metadata"]["id"] for r in records] == [world.conversations["bob_api"].pk]
    assert records[0]["messages"] == stored_messages(world.conversations["bob_api"].pk)
    entry = AuditEntry.objects.get(action=AuditEntry.Action.EXPORT)
    assert entry.actor is None and entry.actor_name == "operator (manage.py)"
    assert entry.filters == {"command": "exportlogs", "team": ["alpha"], "source": "api"}


def test_it_exports_logs_to_a_file_by_date(world: World, tmp_path: Path) -> None:
    old = world.conversations["bob_shared"]
    Conversation.objects.filter(pk=old.pk).update(created=timezone.now() - timedelta(days=10))
    today = timezone.now().date()
    target = tmp_path / "logs.jsonl"
    call_command(
        "exportlogs", "--since", str(today - timedelta(days=1)), "--output", str(target), stderr=io.StringIO()
    )
    ids = {json.loads(line)["metadata"]["id"] for line in target.read_text().splitlines()}
    assert old.pk not in ids and world.conversations["bob_api"].pk in ids and len(ids) == 4
    out = io.StringIO()
    call_command("exportlogs", "--until", str(today - timedelta(days=5)), stdout=out)
    assert [json.loads(line)["metadata"]["id"] for line in out.getvalue().splitlines()] == [old.pk]


def test_it_names_a_bad_exportlogs_filter(world: World) -> None:
    with pytest.raises(CommandError, match="No team named 'gamma'"):
        call_command("exportlogs", "--team", "gamma")
    with pytest.raises(CommandError, match="not a date"):
        call_command("exportlogs", "--since", "yesterday")


def test_it_exports_who_wrote_a_message_and_what_was_superseded(world: World) -> None:
    shared = world.conversations["bob_shared"]
    first = Message.objects.filter(conversation=shared).order_by("id").first()
    Message.objects.filter(pk=first.pk).update(author=world.alice, superseded_at=timezone.now())
    records = jsonl_records(
        logged_in(world.root).get(reverse("admin:conversations_conversation_export", args=["jsonl"]))
    )
    record = next(r for r in records if r["metadata"]["id"] == shared.pk)
    assert record["messages"] == stored_messages(shared.pk)  # superseded messages are kept, and marked
    meta = record["metadata"]["messages"]
    assert meta[0]["author"] == "alice" and meta[0]["superseded_at"] is not None
    assert meta[1]["author"] is None and meta[1]["superseded_at"] is None
    page = logged_in(world.root).get(reverse("admin:conversations_conversation_change", args=[shared.pk]))
    assert (
        "by alice" in page.content.decode() and "review-message role-user superseded" in page.content.decode()
    )


def test_it_exports_which_message_a_version_belongs_to(world: World) -> None:
    """A regenerated answer or an edited message is a version of an earlier one (the browser chat's
    ‹ 1 / 2 ›): both exports say which."""
    shared = world.conversations["bob_shared"]
    first, second = Message.objects.filter(conversation=shared).order_by("id")[:2]
    Message.objects.filter(pk=second.pk).update(version_of=first)
    records = jsonl_records(
        logged_in(world.root).get(reverse("admin:conversations_conversation_export", args=["jsonl"]))
    )
    meta = next(r for r in records if r["metadata"]["id"] == shared.pk)["metadata"]["messages"]
    assert [m["version_of"] for m in meta[:2]] == [None, first.pk]
    lines = "".join(export.csv_lines(Conversation.objects.filter(pk=shared.pk)))
    rows = list(csv.DictReader(io.StringIO(lines)))
    assert [row["version_of"] for row in rows[:2]] == ["", str(first.pk)]
