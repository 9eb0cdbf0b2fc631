"""A reply's history read (``queries.prompt_messages``), on the way to every reply's first token:
the ORM's query, built once per database and run with each conversation's id."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.models.sql.compiler import SQLCompiler
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from conversations import actions, queries
from conversations.models import Message

pytestmark = pytest.mark.django_db


def fill(conversation, author, words: str) -> None:
    """Messages of every kind the history has to sort: kept, left out, and hidden."""
    add = Message.objects.create
    add(conversation=conversation, role=Message.Role.SYSTEM, content=f"{words}: be brief")
    actions.add_user_message(conversation, f"{words}: hello", author=author)
    add(conversation=conversation, role=Message.Role.ASSISTANT, content=f"{words}: hi", token_ids=[1, 2, 3])
    add(conversation=conversation, role=Message.Role.ASSISTANT, content="", status=Message.Status.ERROR)
    add(
        conversation=conversation,
        role=Message.Role.USER,
        content="unanswered",
        status=Message.Status.UNANSWERED,
    )
    add(conversation=conversation, role=Message.Role.USER, content="hidden", superseded_at=timezone.now())
    actions.add_user_message(conversation, f"{words}: and now?", author=author)
    add(
        conversation=conversation,
        role=Message.Role.ASSISTANT,
        content=f"{words}: so",
        status=Message.Status.INTERRUPTED,
    )


def test_the_history_is_read_with_sql_built_once_as_the_orm_reads_it(alice, alpha, chat, monkeypatch) -> None:
    other = actions.start_conversation(alice, alpha)
    fill(chat, alice, "one")
    fill(other, alice, "two")
    queries.prompt_messages(chat)  # (the first read of the process may build it)
    built: list[str] = []
    as_sql = SQLCompiler.as_sql

    def counted(self, *args, **kwargs):
        built.append(type(self).__name__)
        return as_sql(self, *args, **kwargs)

    monkeypatch.setattr(SQLCompiler, "as_sql", counted)
    with CaptureQueriesContext(connection) as ran:
        histories = [queries.prompt_messages(c, "new") for c in (chat, other)]
    monkeypatch.undo()
    assert built == [] and len(ran) == 2  # one query each, none built
    for conversation, history in zip((chat, other), histories, strict=True):
        rows = list(
            queries.visible_messages(conversation).values_list("role", "content", "status", "token_ids")
        )
        assert queries._history(conversation.pk) == rows  # what the ORM reads, token ids decoded
        assert history[-1] == {"role": "user", "content": "new"}
    words = [m["content"].split(":")[0] for m in histories[1] if m["content"] != "new"]
    assert set(words) == {"two"}  # each conversation's own
    assert histories[0][:3] == [
        {"role": "system", "content": "one: be brief"},
        {"role": "user", "content": "one: hello"},
        {"role": "assistant", "content": "one: hi", "token_ids": [1, 2, 3]},
    ]
