"""The kill -9 drill of the benchmarks (bench/drill.py) in a short run: a server killed while it
streams replies to several clients, then started again on the same database, has lost nothing.
It runs against the database of this test run: SQLite, or PostgreSQL when DATABASE_URL is one
(CI runs the suite on both). The model is the tiny one at a fixed pace (tests/paced_model.py): the
drill checks what the database kept, not the model's words, and the benchmark runs the real one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.drill import drill
from tests.paced_model import paced_env, write_paced_model

pytestmark = pytest.mark.slow


def test_a_server_killed_mid_stream_loses_nothing(tmp_path: Path) -> None:
    url = os.environ.get("DATABASE_URL", "")
    database = "postgres" if url.startswith(("postgres://", "postgresql://")) else "sqlite"
    env = paced_env(write_paced_model(tmp_path / "model"))
    totals = drill(database, kills=2, clients=3, root=tmp_path, postgres=url or "postgres://", server_env=env)
    assert totals.kills == 2 and totals.sent >= 2, totals
    assert totals.found == totals.sent and totals.lost == 0, totals
    assert totals.interrupted >= 1, totals  # the kills did land mid-stream
    # Checkpoints every second; generous for a busy CI machine.
    assert totals.behind_max <= 2.5, totals
