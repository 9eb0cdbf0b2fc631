"""Live access across processes: a member removed by another process (here a `manage.py shell`-like
script, as an admin's request served by another web process would) loses his open socket on a real
`manage.py serve` process, through the Redis channel layer, before the next message reaches it.
A raw websocket client; the tiny model (no reply is wanted)."""

from __future__ import annotations

import json
import subprocess
import time
import uuid

import pytest

from tests.conversations.test_chat_browser import PASSWORD, SETUP
from tests.live_server import PYTHON, ROOT, LiveServer
from tests.raw_ws import RawSocket
from tests.tiny_gguf import write_tiny_llama

REMOVE_ALICE_THEN_WRITE = """
import json, time, django
django.setup()
from django.contrib.auth import get_user_model
from conversations import actions
from conversations.models import Conversation, Membership
from review import services as review_services
membership = Membership.objects.get(team__name="alpha", user__username="alice")
review_services.remove_member(membership, by=None)
removed_at = time.time()
chat = Conversation.objects.get(title="Trip planning for the offsite")
bob = get_user_model().objects.get(username="bob")
actions.add_user_message(chat, "written after alice left", author=bob)
print(json.dumps({"removed_at": removed_at}))
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, redis_url: str):
    root = tmp_path_factory.mktemp("live-access")
    tiny = write_tiny_llama(root / "tiny.gguf")
    env = {
        "CHAT_MODEL_PATH": str(tiny),
        "REDIS_URL": redis_url,
        "CHAT_CHANNEL_PREFIX": f"access{uuid.uuid4().hex[:8]}",
    }
    live = LiveServer(root / "site", env, command=["manage.py", "serve"]).start()
    try:
        live.run_python(SETUP)
        yield live
    finally:
        live.stop()


@pytest.mark.slow  # a live server and a second process
def test_it_closes_a_removed_members_socket_from_another_process_through_redis(server: LiveServer) -> None:
    conversation_id = server.query(
        "SELECT id FROM conversations_conversation WHERE title = 'Trip planning for the offsite'"
    )[0]["id"]
    path = f"/ws/c/{conversation_id}/"
    removed = RawSocket(server, path, server.log_in("alice", PASSWORD))
    witness = RawSocket(server, path, server.log_in("bob", PASSWORD))
    try:
        for sock in (removed, witness):
            assert sock.status_line.startswith("HTTP/1.1 101"), sock.status_line
            # both sockets are in the conversation's group
            assert sock.wait_for('id="messages"', timeout=30), f"no messages on {sock.status_line}"
        script = subprocess.Popen(
            [PYTHON, "-c", REMOVE_ALICE_THEN_WRITE],
            cwd=ROOT,
            env=server._env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        frames, code = removed.read_until_closed(timeout=60)  # while the script runs
        closed_at = time.time()
        out, err = script.communicate(timeout=60)
        assert script.returncode == 0, err
        removed_at = json.loads(out.strip().splitlines()[-1])["removed_at"]
        assert code == 4403
        assert not any(b"after alice left" in payload for _, payload in frames)
        # it was sent, to those who may read it
        assert witness.wait_for("written after alice left", timeout=30), "the witness did not get it"
        assert closed_at - removed_at < 1.0, f"closed {closed_at - removed_at:.2f} s after the commit"
    finally:
        removed.close()
        witness.close()
