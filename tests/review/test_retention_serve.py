"""`manage.py serve` runs the retention purge in the background: a live server on a database with
an expired conversation erases it by itself (a tiny model stands in for the real one)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.live_server import LiveServer
from tests.tiny_gguf import write_tiny_llama

PLANT = """
import django
django.setup()
from datetime import timedelta
from django.contrib.auth import get_user_model
from django.utils import timezone
from conversations import actions
from conversations.models import Conversation, Team
from review import retention
alpha = Team.objects.get(name="alpha")
alice = get_user_model().objects.get(username="alice")
retention.set_retention(alpha, keep_days=7, deleted_keep_days=30, by=None)
old = actions.start_conversation(alice, alpha, title="old secret")
actions.add_user_message(old, "old secret words", author=alice)
long_ago = timezone.now() - timedelta(days=8)
old.messages.update(created=long_ago)
Conversation.objects.filter(pk=old.pk).update(created=long_ago)
print(old.pk)
"""


@pytest.mark.slow  # a live server
def test_it_purges_in_the_background_of_manage_py_serve(tmp_path: Path) -> None:
    model = write_tiny_llama(tmp_path / "tiny.gguf", context_length=512)
    env = {"CHAT_MODEL_PATH": str(model), "CHAT_THREADS": "1", "CHAT_PURGE_FIRST_DELAY": "0"}
    server = LiveServer(tmp_path / "site", env, command=["manage.py", "serve"])
    server._setup()
    conversation_id = int(server.run_python(PLANT).strip().splitlines()[-1])
    try:
        server.start(setup=False)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait for the condition: the conversation purged
            rows = server.query(
                "SELECT purged_at FROM conversations_conversation WHERE id = ?", conversation_id
            )
            if rows[0]["purged_at"] is not None:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"not purged:\n{server.server_log()}")
        contents = server.query(
            "SELECT content FROM conversations_message WHERE conversation_id = ?", conversation_id
        )
        assert [row["content"] for row in contents] == [""]
        entries = server.query("SELECT actor_name, detail FROM review_auditentry WHERE action = 'purge'")
        assert len(entries) == 1 and "keep_days=7" in entries[0]["detail"]
    finally:
        server.stop()
