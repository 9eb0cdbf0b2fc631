"""Operations endpoints: /ready (model, database, channel layer) and /metrics (Prometheus)."""

from __future__ import annotations

import asyncio
import hmac
import uuid

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from chatsite import metrics
from chatsite.runtime import get_runtime
from upstreams.health import upstream_report


def _database_ok() -> str | None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        connection.close()
    return None


async def _channel_layer_ok() -> str | None:
    layer = get_channel_layer()
    if layer is None:
        return "no channel layer is configured"
    try:
        channel = await layer.new_channel()
        token = uuid.uuid4().hex
        await layer.send(channel, {"type": "ready.probe", "token": token})
        message = await asyncio.wait_for(layer.receive(channel), timeout=2)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if message.get("token") == token else "the probe came back wrong"


@require_GET
async def ready(request: HttpRequest) -> JsonResponse:
    """200 when this process can serve chats: model loaded, database and channel layer reachable."""
    runtime = get_runtime()
    runtime.start_loading()
    checks = {
        "model": None
        if runtime.state == "ready" and not runtime.shutting_down
        else runtime.status()["state"],
        "database": await sync_to_async(_database_ok, thread_sensitive=False)(),
        "channel_layer": await _channel_layer_ok(),
    }
    ok = all(v is None for v in checks.values())
    body = {"status": "ready" if ok else "not ready", "checks": {k: v or "ok" for k, v in checks.items()}}
    # Told, not checked: an unhealthy upstream leaves this process serving its other models.
    if (upstreams := await upstream_report(request))["state"] != "none":
        body["upstreams"] = upstreams
    return JsonResponse(body, status=200 if ok else 503)


def _allowed(request: HttpRequest) -> bool:
    token = settings.CHAT_METRICS_TOKEN
    header = request.headers.get("Authorization", "")
    if token and header.startswith("Bearer ") and hmac.compare_digest(header[7:].encode(), token.encode()):
        return True
    return request.META.get("REMOTE_ADDR") in settings.CHAT_METRICS_ALLOW


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not _allowed(request):
        # Not found rather than forbidden: the endpoint's existence is not advertised.
        return HttpResponse("Not found\n", status=404, content_type="text/plain")
    metrics.refresh_gauges()
    return HttpResponse(generate_latest(metrics.REGISTRY), content_type=CONTENT_TYPE_LATEST)
