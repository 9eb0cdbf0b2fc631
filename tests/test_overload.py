"""A burst of 10x what the slots and queue can hold: 429s and successes only, every success logged,
memory flat across bursts. A real server process with the real default model."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.live_server import LiveServer

pytestmark = pytest.mark.model

BURST = 30  # slots 1 + queue 2 = 3 at a time: 10x


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_it_answers_a_burst_with_429s_and_successes_only(tmp_path: Path) -> None:
    server = LiveServer(
        tmp_path / "site", {"CHAT_SLOTS": "1", "CHAT_QUEUE_MAX": "2", "CHAT_THREADS": "2"}
    ).start()
    try:
        body = {"model": "gpt-3.5-turbo", "max_tokens": 6, "logit_bias": {"2": -100}}

        def call(i: int) -> tuple[int, dict[str, str]]:
            request = {
                **body,
                "messages": [{"role": "user", "content": f"Count to {i}."}],
                "user": f"burst-{i}",
            }
            status, headers, _ = server.request("POST", "/v1/chat/completions", request, timeout=120)
            return status, headers

        before = server.query("SELECT COUNT(*) AS n FROM conversations_message WHERE role = 'assistant'")[0][
            "n"
        ]
        rss = []
        statuses: list[int] = []
        for _ in range(3):
            with ThreadPoolExecutor(max_workers=BURST) as pool:
                results = list(pool.map(call, range(BURST)))
            statuses += [s for s, _ in results]
            assert all(h.get("Retry-After") for s, h in results if s == 429)
            rss.append(rss_mb(server.process.pid))
        assert set(statuses) <= {200, 429}, statuses
        successes = statuses.count(200)
        assert successes >= 3 and statuses.count(429) >= BURST
        after = server.query("SELECT COUNT(*) AS n FROM conversations_message WHERE role = 'assistant'")[0][
            "n"
        ]
        assert after - before == successes  # a refused call wrote nothing
        refused_logged = server.query(
            "SELECT COUNT(*) AS n FROM conversations_conversation WHERE request_user LIKE 'burst-%'"
        )[0]["n"]
        assert refused_logged == successes
        assert rss[2] - rss[0] < 20, rss  # MB: no growth from burst to burst
    finally:
        server.stop()
