"""/ready writes: a database that answers reads but cannot be written is not ready."""

from __future__ import annotations

import sqlite3

import pytest
from django.db import connection
from django.test import Client

from conversations.runtime import get_runtime

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def runtime():
    runtime = get_runtime()
    runtime.load(timeout=120)
    return runtime


def hold_write_lock():
    """Another connection that holds the lock the probe's write needs; returns a release function."""
    settings = connection.settings_dict
    if connection.vendor == "postgresql":
        import psycopg

        holder = psycopg.connect(
            dbname=settings["NAME"],
            user=settings["USER"],
            password=settings["PASSWORD"],
            host=settings["HOST"],
            port=settings["PORT"] or None,
        )
        holder.execute("LOCK TABLE chatsite_readyprobe IN ACCESS EXCLUSIVE MODE")
        # As SQLite's write lock: no other connection writes messages, but they can be read.
        holder.execute("LOCK TABLE conversations_message IN EXCLUSIVE MODE")
    else:
        name = str(settings["NAME"])
        holder = sqlite3.connect(name if name.startswith("file:") else f"file:{name}", uri=True)
        holder.isolation_level = None
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("INSERT INTO chatsite_readyprobe (checked_at) VALUES ('2026-01-01')")

    def release() -> None:
        holder.rollback()
        holder.close()

    return release


def test_it_is_not_ready_while_another_connection_holds_the_write_lock(runtime) -> None:
    assert Client().get("/ready").status_code == 200
    release = hold_write_lock()
    try:
        response = Client().get("/ready")
    finally:
        release()
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == "failing"
    assert Client().get("/ready").status_code == 200
