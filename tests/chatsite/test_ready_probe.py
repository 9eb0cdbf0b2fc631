"""/ready writes: a database that answers reads but cannot be written is not ready."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import contextmanager

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


@contextmanager
def short_busy_timeout(seconds: float = 1.0):
    """Every connection that opens a cursor meanwhile, in whichever thread, waits at most
    ``seconds`` for a lock (the site's busy timeout, CHAT_DB_BUSY_TIMEOUT, is 5 s), then has its
    own timeout back: for a test of a write that fails behind ``hold_write_lock``, without waiting
    the whole production timeout. SQLite: each connection's busy timeout; PostgreSQL: the lock
    timeout of the pool's connections (``_pool_with_lock_timeout``)."""
    if connection.vendor == "postgresql":
        with _pool_with_lock_timeout(seconds):
            yield
        return
    if connection.vendor != "sqlite":
        yield
        return
    from django.db.backends.sqlite3.base import DatabaseWrapper

    create_cursor = DatabaseWrapper.create_cursor
    shortened: dict[int, tuple[sqlite3.Connection, int]] = {}

    def with_short_timeout(self, name=None):
        raw = self.connection
        if id(raw) not in shortened:
            restore_ms = round(float(self.settings_dict["OPTIONS"].get("timeout", 5)) * 1000)
            raw.execute(f"PRAGMA busy_timeout = {round(seconds * 1000)}")
            shortened[id(raw)] = (raw, restore_ms)
        return create_cursor(self, name)

    DatabaseWrapper.create_cursor = with_short_timeout
    try:
        yield
    finally:
        DatabaseWrapper.create_cursor = create_cursor
        for raw, restore_ms in shortened.values():
            try:
                raw.execute(f"PRAGMA busy_timeout = {restore_ms}")
            except sqlite3.ProgrammingError:  # closed meanwhile
                pass


@contextmanager
def _pool_with_lock_timeout(seconds: float):
    """PostgreSQL: the process's pooled connections were opened with the site's lock timeout. The
    pool is closed, so that a new one opens them with ``seconds``, and closed again afterwards,
    so that the next connections have the site's again."""
    options = connection.settings_dict["OPTIONS"]
    site = options["options"]
    options["options"] = f"-c lock_timeout={round(seconds * 1000)}"
    _new_pool()
    try:
        yield
    finally:
        _new_pool()
        options["options"] = site


def _new_pool() -> None:
    """Close the pool (the next connection opens a new one), with this thread's connection, which
    an async test's thread does not hold (its database work runs in other threads)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        connection.close()
    connection.close_pool()


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
