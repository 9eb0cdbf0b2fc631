"""Every write to upstream connections goes through here; ``registry`` turns the rows into the
process's live connections."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from urllib.parse import urlsplit

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from inference.upstream.connection import Connection, UpstreamConfig, snapshot
from inference.upstream.errors import UpstreamError
from upstreams import audit, crypto, registry
from upstreams.models import Upstream


def normalize_base_url(url: str) -> str:
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValidationError(f"'{url}' is not an http(s) URL.")
    if not parts.path.endswith("/v1"):
        raise ValidationError(f"'{url}' must be the server's OpenAI-compatible root, ending in /v1.")
    return url


def create_upstream(
    name: str,
    base_url: str,
    *,
    api_key: str = "",
    max_concurrent: int = 4,
    queue_max: int = 16,
    connect_timeout: float = 5.0,
    read_timeout: float = 120.0,
    models: Sequence[str] = (),
    by: AbstractBaseUser | None = None,
) -> Upstream:
    """Add a connection (audited: ``by``, or the operator of ``manage.py addupstream``)."""
    upstream = Upstream(
        name=name,
        base_url=normalize_base_url(base_url),
        api_key_encrypted=crypto.encrypt(api_key),
        max_concurrent=max_concurrent,
        queue_max=queue_max,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        listed_models=list(dict.fromkeys(models)),
    )
    upstream.full_clean()
    with transaction.atomic():
        upstream.save()
        audit.upstream_added(upstream, by)
    registry.invalidate()
    return upstream


def set_api_key(upstream: Upstream, api_key: str) -> None:
    upstream.api_key_encrypted = crypto.encrypt(api_key)
    upstream.save(update_fields=["api_key_encrypted"])
    registry.invalidate()


def remove_upstream(name: str, by: AbstractBaseUser | None = None) -> bool:
    """Remove a connection (audited); False when there is none of that name."""
    with transaction.atomic():
        upstream = Upstream.objects.select_for_update().filter(name=name).first()
        if upstream is not None:
            audit.upstream_removed(upstream, by)
            upstream.delete()
    registry.invalidate()
    return upstream is not None


def config_for(upstream: Upstream) -> UpstreamConfig:
    try:
        api_key = crypto.decrypt(upstream.api_key_encrypted)
    except crypto.UndecryptableKey:
        api_key = ""  # it will answer 401, which says what is wrong; the rest keeps working
    return UpstreamConfig(
        name=upstream.name,
        base_url=upstream.base_url,
        api_key=api_key,
        max_concurrent=upstream.max_concurrent,
        queue_max=upstream.queue_max,
        connect_timeout=upstream.connect_timeout,
        read_timeout=upstream.read_timeout,
        models=tuple(upstream.model_ids),
        enabled=upstream.enabled,
    )


def load_configs() -> list[UpstreamConfig]:
    return [config_for(u) for u in Upstream.objects.filter(enabled=True)]


def check(upstream: Upstream) -> dict:
    """Ask the server for its models now (a fresh connection, its own event loop): its health,
    and the ids it serves, saved as the upstream's discovered models when it answered."""
    connection = Connection(config_for(upstream))

    async def probe() -> list[str] | None:
        try:
            return await connection.check()
        except UpstreamError:
            return None
        finally:
            await connection.aclose()

    ids = asyncio.run(probe())
    with transaction.atomic():
        upstream.models_refreshed_at = timezone.now()
        upstream.refresh_error = connection.error
        fields = ["models_refreshed_at", "refresh_error"]
        if ids is not None:
            upstream.discovered_models = ids
            fields.append("discovered_models")
        upstream.save(update_fields=fields)
    return snapshot(connection)
