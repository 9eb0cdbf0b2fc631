"""The kill -9 drill of the benchmarks (bench/drill.py) in a short run: a server killed while it
streams replies to several clients, then started again on the same database, has lost nothing.
It runs against the database of this test run: SQLite, or PostgreSQL when DATABASE_URL is one
(CI runs the suite on both)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.drill import drill

pytestmark = pytest.mark.model


def test_a_server_killed_mid_stream_loses_nothing(tmp_path: Path) -> None:
    url = os.environ.get("DATABASE_URL", "")
    database = "postgres" if url.startswith(("postgres://", "postgresql://")) else "sqlite"
    totals = drill(database, kills=2, clients=3, root=tmp_path, postgres=url or "postgres://")
    assert totals.kills == 2 and totals.sent >= 2, totals
    assert totals.found == totals.sent and totals.lost == 0, totals
    assert totals.interrupted >= 1, totals  # the kills did land mid-stream
    # Checkpoints every second; generous for a busy CI machine.
    assert totals.behind_max <= 2.5, totals
