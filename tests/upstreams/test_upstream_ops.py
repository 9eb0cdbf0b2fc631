"""/status, /ready and /metrics with upstream connections: a real scripted server (its own process)
and an address nothing listens on; staff see each connection, everyone else one word."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient, Client

from inference.upstream.errors import UpstreamError
from tests.live_server import free_port
from tests.upstream_servers import FaultServer
from upstreams import registry
from upstreams import services as upstream_services

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

HELLO = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    server = FaultServer(tmp_path_factory.mktemp("faults")).start()
    yield server
    server.kill()


@pytest.fixture
def pool_with_traffic(faults):
    """'good' (the fault server) answered two calls, one of them a 500; 'gone' could not be reached."""

    def add() -> None:
        upstream_services.create_upstream("good", faults.url, models=["fault-ok", "fault-500"])
        upstream_services.create_upstream("gone", f"http://127.0.0.1:{free_port()}/v1", models=["lost"])

    return add


async def traffic(add) -> None:
    await sync_to_async(add)()
    registry.invalidate()
    pool = await registry.apool()
    opened = await pool.open("fault-ok", {"model": "fault-ok", **HELLO}, stream=False)
    await opened.aclose()
    for model in ("fault-500", "lost"):
        with pytest.raises(UpstreamError):
            await pool.open(model, {"model": model, **HELLO}, stream=False)


async def cleanup() -> None:
    pool = await registry.apool()
    await pool.aclose()  # ends the background re-checks of 'gone'
    registry.invalidate()


async def test_it_exports_per_connection_requests_errors_latency_and_in_flight(pool_with_traffic) -> None:
    await traffic(pool_with_traffic)
    try:
        pool = await registry.apool()
        held = await pool.open("fault-ok", {"model": "fault-ok", "stream": True, **HELLO}, stream=True)
        body = (await sync_to_async(Client().get)("/metrics")).content.decode()
        await held.aclose()
    finally:
        await cleanup()
    assert 'chatsite_upstream_requests_total{connection="good"} 3.0' in body
    assert 'chatsite_upstream_errors_total{connection="good"} 1.0' in body
    assert 'chatsite_upstream_in_flight{connection="good"} 1.0' in body
    assert 'chatsite_upstream_latency_seconds_count{connection="good"} 2.0' in body
    assert 'chatsite_upstream_healthy{connection="gone"} 0.0' in body
    assert 'chatsite_upstream_healthy{connection="good"} 0.0' in body  # the 500 took it out


async def test_it_shows_connection_health_to_staff_only(pool_with_traffic, admin_user, alice) -> None:
    await traffic(pool_with_traffic)
    try:
        anonymous = await AsyncClient().get("/ready")
        staff = AsyncClient()
        await sync_to_async(staff.force_login)(admin_user)
        detailed = await staff.get("/ready")
        member = Client()
        await sync_to_async(member.force_login)(alice)
        page = (await sync_to_async(member.get)("/status")).content.decode()
        admin_client = Client()
        await sync_to_async(admin_client.force_login)(admin_user)
        admin_page = (await sync_to_async(admin_client.get)("/status")).content.decode()
    finally:
        await cleanup()
    assert anonymous.json()["upstreams"] == {"state": "down"}
    connections = {c["name"]: c for c in detailed.json()["upstreams"]["connections"]}
    assert not connections["gone"]["healthy"] and "could not reach" in connections["gone"]["error"]
    assert "down" in page and "gone" not in page and "could not reach" not in page
    assert "gone" in admin_page and "could not reach" in admin_page
