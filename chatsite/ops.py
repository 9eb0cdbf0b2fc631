"""Operations endpoints: /ready (model, database, channel layer) and /metrics (Prometheus)."""

from __future__ import annotations

import asyncio
import hmac
import uuid

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from conversations import metrics
from conversations.runtime import get_runtime
from upstreams.health import upstream_report

PROBE_TIMEOUT_MS = 1000  # how long the probe waits for a write lock (a probe must answer fast)


def _database_ok() -> str | None:
    """A real, committed write (one row of ReadyProbe): a database that can be read but not written
    (a full disk, a write lock held for long, a read-only file) is not ready."""
    from chatsite.models import ReadyProbe

    try:
        with connection.cursor() as cursor:
            if connection.vendor == "sqlite":  # this connection only: it is closed below
                cursor.execute(f"PRAGMA busy_timeout = {PROBE_TIMEOUT_MS}")
        with transaction.atomic():
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute(f"SET LOCAL lock_timeout = {PROBE_TIMEOUT_MS}")
            ReadyProbe.objects.update_or_create(pk=1, defaults={"checked_at": timezone.now()})
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
    status = runtime.status()
    checks = {
        "model": None if runtime.state == "ready" and not runtime.shutting_down else status["state"],
        "database": await sync_to_async(_database_ok, thread_sensitive=False)(),
        "channel_layer": await _channel_layer_ok(),
    }
    ok = all(v is None for v in checks.values())
    # Error texts name hosts, users and files: staff and the metrics token see them; others see
    # whether each check passes, and the model's state ("loading", "error", "shutting down").
    detailed = _has_metrics_token(request) or await _is_staff(request)
    shown = {k: (v if detailed else "failing") if v else "ok" for k, v in checks.items()}
    if checks["model"]:
        shown["model"] = checks["model"]
        if detailed and status["error"]:
            shown["model"] += f": {status['error']}"
    body = {"status": "ready" if ok else "not ready", "checks": shown}
    # Told, not checked: an unhealthy upstream leaves this process serving its other models.
    if (upstreams := await upstream_report(request))["state"] != "none":
        body["upstreams"] = upstreams
    return JsonResponse(body, status=200 if ok else 503)


async def _is_staff(request: HttpRequest) -> bool:
    user = await request.auser()
    return bool(user.is_active and user.is_staff)


def _has_metrics_token(request: HttpRequest) -> bool:
    token = settings.CHAT_METRICS_TOKEN
    header = request.headers.get("Authorization", "")
    return bool(
        token and header.startswith("Bearer ") and hmac.compare_digest(header[7:].encode(), token.encode())
    )


def _allowed(request: HttpRequest) -> bool:
    if _has_metrics_token(request):
        return True
    return request.META.get("REMOTE_ADDR") in settings.CHAT_METRICS_ALLOW


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not _allowed(request):
        # Not found rather than forbidden: the endpoint's existence is not advertised.
        return HttpResponse("Not found\n", status=404, content_type="text/plain")
    metrics.refresh_gauges()
    return HttpResponse(generate_latest(metrics.REGISTRY), content_type=CONTENT_TYPE_LATEST)
