"""SQLite connections are kept between requests (chatsite/settings.py): opening one costs more
than the queries of a /v1 call (the file, the WAL and synchronous pragmas, Django's functions).
Requests go through the ASGI application Daphne serves (chatsite/asgi.py), whose handler keeps the
threads they run their sync work in (chatsite/threads.py), and with them their connections."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from channels.testing import HttpCommunicator
from django.db import connection
from django.db.backends.signals import connection_created

from conversations import actions

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_requests_reuse_the_threads_connections(alice, alpha) -> None:
    """On PostgreSQL (psycopg's pool) this runs again in a child pytest on SQLite, so that every
    run checks the SQLite setting."""
    from asgiref.sync import sync_to_async

    if connection.vendor != "sqlite":
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        node = f"{__file__}::test_requests_reuse_the_threads_connections"
        child = subprocess.run(
            [sys.executable, "-m", "pytest", node, "-q", "-n0", "-p", "no:cacheprovider"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert child.returncode == 0, child.stdout[-3000:] + child.stderr[-3000:]
        return

    from chatsite.asgi import application
    from chatsite.threads import ASGIHandler

    _, raw = await sync_to_async(actions.create_api_key)(alice, alpha, "conn")
    opened = []

    def count(sender, connection, **kwargs) -> None:
        opened.append(connection.alias)

    started = ASGIHandler.threads.started
    headers = [(b"host", b"testserver"), (b"authorization", f"Bearer {raw}".encode())]
    connection_created.connect(count)
    try:
        for _ in range(10):
            communicator = HttpCommunicator(application, "GET", "/v1/models", headers=headers)
            response = await communicator.get_response(10)
            await communicator.wait(10)
            assert response["status"] == 200, response["body"][:300]
    finally:
        connection_created.disconnect(count)
    # Ten requests one after the other, each with its key check in its request's thread: one thread
    # (none if one was kept from an earlier test) and its one connection, not one of each per request.
    assert ASGIHandler.threads.started - started <= 1
    assert len(opened) <= 1, f"{len(opened)} connections opened for 10 requests"
