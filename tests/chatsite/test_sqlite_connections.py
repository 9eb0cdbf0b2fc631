"""SQLite connections are kept between requests (chatsite/settings.py): opening one costs more
than the queries of a /v1 call (the file, the WAL and synchronous pragmas, Django's functions)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.backends.signals import connection_created
from django.test import AsyncClient

from conversations import actions

pytestmark = pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's own connection setting")


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_requests_reuse_the_threads_connections(alice, alpha) -> None:
    from asgiref.sync import sync_to_async

    _, raw = await sync_to_async(actions.create_api_key)(alice, alpha, "conn")
    opened = []

    def count(sender, connection, **kwargs) -> None:
        opened.append(connection.alias)

    connection_created.connect(count)
    try:
        for _ in range(10):
            response = await AsyncClient().get("/v1/models", headers={"Authorization": f"Bearer {raw}"})
            assert response.status_code == 200
    finally:
        connection_created.disconnect(count)
    # Ten requests, each with its database trips: at most one new connection per thread used.
    assert len(opened) < 10, f"{len(opened)} connections opened for 10 requests"
