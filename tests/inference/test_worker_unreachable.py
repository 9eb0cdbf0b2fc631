"""A web process whose inference worker cannot be reached (Redis down, with
CHAT_INFERENCE_WORKER=1) answers /v1 with 503 and a clear message, writes nothing, and leaves no
row streaming: it is the service that is unavailable, not the caller who is over a limit (429)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.live_server import LiveServer, free_port
from tests.tiny_gguf import write_tiny_llama

HI = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.mark.slow  # a live server
def test_it_answers_503_when_the_inference_worker_cannot_be_reached(tmp_path: Path) -> None:
    tiny = write_tiny_llama(tmp_path / "tiny.gguf")
    server = LiveServer(
        tmp_path / "site",
        {
            "CHAT_MODEL_PATH": str(tiny),
            "CHAT_INFERENCE_WORKER": "1",
            "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens: Redis is down
        },
    )
    try:
        server.start(model=False)
        # The web process loads the tokenizer and template (no weights) on the first call: wait
        # until it no longer answers "still loading".
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status, _, body = server.request("POST", "/v1/chat/completions", HI)
            if json.loads(body)["error"]["code"] != "model_not_ready":
                break
            time.sleep(0.2)
        for stream in (False, True):
            status, headers, body = server.request("POST", "/v1/chat/completions", {**HI, "stream": stream})
            assert status == 503, body
            error = json.loads(body)["error"]
            assert error["code"] == "worker_unavailable", error
            assert "inference worker" in error["message"]
            assert headers.get("Retry-After")
        assert server.query("SELECT COUNT(*) AS n FROM conversations_message")[0]["n"] == 0
    finally:
        server.stop()
