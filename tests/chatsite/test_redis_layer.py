"""The Redis channel layer (REDIS_URL), which several server processes share.

These tests need the Redis server on 127.0.0.1:6379 (or REDIS_URL). Without it they skip with the
reason; under CI=true a skip fails the run (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path

import pytest
from channels_redis.core import RedisChannelLayer

from tests.live_server import LiveServer
from tests.worker_process import redis_layer as layer

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def test_it_delivers_a_group_message_to_another_layer_instance(redis_url: str) -> None:
    prefix = f"test-{uuid.uuid4().hex[:8]}"

    async def scenario() -> dict:
        sender, receiver = layer(redis_url, prefix), layer(redis_url, prefix)  # as two processes
        channel = await receiver.new_channel()
        await receiver.group_add("conversation-1", channel)
        await sender.group_send("conversation-1", {"type": "chat.delta", "text": "héllo"})
        message = await asyncio.wait_for(receiver.receive(channel), timeout=5)
        await receiver.group_discard("conversation-1", channel)
        await sender.flush()
        return message

    assert asyncio.run(scenario()) == {"type": "chat.delta", "text": "héllo"}


@pytest.mark.model
def test_it_streams_a_reply_of_another_process_through_redis(redis_url: str, tmp_path: Path) -> None:
    """A server process publishes a reply's deltas to its conversation's group in Redis; this test
    process, a second member of the layer, receives them and they add up to the reply."""
    prefix = f"test-{uuid.uuid4().hex[:8]}"  # its own: no other server or run shares its groups
    server = LiveServer(tmp_path / "site", {"REDIS_URL": redis_url, "CHAT_CHANNEL_PREFIX": prefix}).start()
    try:
        status, _, body = server.request("GET", "/ready", key=None)
        assert status == 200 and json.loads(body)["checks"]["channel_layer"] == "ok"

        async def scenario() -> tuple[str, str]:
            watcher = RedisChannelLayer(hosts=[{"address": redis_url, "socket_timeout": 15}], prefix=prefix)
            channel = await watcher.new_channel()
            # A fresh database: the readiness probe made a few conversations; the next ids are ours.
            groups = [f"conversation-{i}" for i in range(1, 20)]
            for group in groups:
                await watcher.group_add(group, channel)
            body = {
                "model": "gpt-3.5-turbo",
                "messages": [{"role": "user", "content": "Say something about the sea."}],
                "max_tokens": 24,
            }
            loop = asyncio.get_running_loop()
            answer = loop.run_in_executor(None, lambda: server.request("POST", "/v1/chat/completions", body))
            texts: list[str] = []
            while True:
                message = await asyncio.wait_for(watcher.receive(channel), timeout=60)
                if message["type"] == "chat.delta":
                    texts.append(message["text"])
                elif message["type"] == "chat.finished":
                    break
            status, _, raw = await answer
            assert status == 200
            for group in groups:
                await watcher.group_discard(group, channel)
            return "".join(texts), json.loads(raw)["choices"][0]["message"]["content"]

        streamed, answered = asyncio.run(scenario())
        assert streamed and streamed == answered
    finally:
        server.stop()
