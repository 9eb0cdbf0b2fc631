"""A burst of 10x what the slots and queue can hold: 429s and successes only, every success logged,
memory flat across bursts. A real server process (`manage.py serve`) with the real default model,
through the load script of the benchmarks (bench/load.py), in a short run."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.load import overload

pytestmark = pytest.mark.model


def test_it_answers_a_burst_with_429s_and_successes_only(tmp_path: Path) -> None:
    # 3 bursts of 30; one model thread, as every test server (tests/live_server.py says why)
    result = overload(tmp_path, bursts=3, slots=1, queue=2, threads=1)
    assert set(result.statuses) <= {200, 429}, result
    assert result.server_errors == 0 and result.retry_after_missing == 0
    assert result.successes >= 3 and result.statuses.get(429, 0) >= result.burst
    assert result.logged_replies == result.successes  # a refused call wrote nothing
    assert result.refused_logged == 0
    rss = result.rss_after_each_mb
    assert rss[-1] - rss[0] < 20, rss  # MB: no growth from burst to burst
