"""The upstream connections' health for /status and /ready: every connection's state for staff,
one word for everyone else (no names, addresses or errors)."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from inference.upstream.connection import snapshot
from inference.upstream.pool import Pool


def states(pool: Pool) -> list[dict[str, Any]]:
    return [snapshot(c) for c in pool.connections.values()]


def overall(found: list[dict[str, Any]]) -> str:
    """``none`` (no connection), ``ok`` (all healthy), ``degraded`` (some) or ``down`` (none)."""
    if not found:
        return "none"
    healthy = sum(1 for s in found if s["healthy"])
    return "ok" if healthy == len(found) else "degraded" if healthy else "down"


def report(pool: Pool, staff: bool) -> dict[str, Any]:
    found = states(pool)
    out: dict[str, Any] = {"state": overall(found)}
    if staff:
        out["connections"] = found
    return out


async def upstream_report(request: HttpRequest) -> dict[str, Any]:
    """For /ready (async)."""
    from upstreams import registry

    try:
        user = await request.auser()
        return report(await registry.apool(), user.is_active and user.is_staff)
    except Exception:  # the database is down: /ready says so in its own check
        return {"state": "unknown"}


def upstream_report_sync(request: HttpRequest) -> dict[str, Any]:
    """For /status (a synchronous view)."""
    from upstreams import registry

    try:
        return report(registry.pool(), request.user.is_active and request.user.is_staff)
    except Exception:  # the database is down
        return {"state": "unknown"}
